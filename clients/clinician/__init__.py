"""The clinician's command line, ``lightbox``: enrolment, sending consults with images, consent
capture, and the image hygiene and PHI checks that run on the phone before anything is sealed.

``cli`` is the entry point; ``commands`` holds the messaging commands; ``phi`` reads burned-in
identifiers on a film. Everything here is built on :mod:`clients.sdk`.
"""
