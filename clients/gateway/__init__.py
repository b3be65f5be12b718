"""The record gateway, ``lightbox-gateway``: a device of the organisation that files consult
images into the patient's record (a PACS over DICOMweb, and a FHIR server where configured),
then orders the copies on clinicians' devices to expire.
"""
