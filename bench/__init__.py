"""The relay's benchmark (``make bench``): not part of the test suite.

    relay.py   the orchestrator: starts Postgres, relays and load generators, prints the table
    world.py   organisations, users, devices, threads and tokens written straight to the database
    load.py    the load generator (one process per slice of devices)
    bare.py    the ceiling: a websocket relay on the same stack without persistence

and beside it (also in ``make bench``): attachments.py, safety.py, phone.py, and startup.py, what
each command costs to start beside the interpreter's own start.
"""
