"""Hospital IT's tool, ``lightbox-admin``: the organisation key (which never leaves IT's
workstation), certificates, provisioning from CSV, rotas, handouts, revocation and consent
withdrawals. It talks to the relay over HTTP only; what runs on the relay host is
``lightbox-server`` (server/manage.py).
"""
