"""The technician's web page (Flask, TLS, French first).

Not built yet: TODO(#6): status, dead letters and replay pages, when issue 6 is taken.
The relay's state it will show is already in the pipeline database
(``appliance status --json`` prints the same figures).
"""
