"""The technician's web page (Flask over TLS, French first): see docs/webui.md.

Modules: :mod:`webui.app` (factory, login and CSRF guard, headers),
:mod:`webui.views` (pages), :mod:`webui.api` (/api/v1, /metrics),
:mod:`webui.state` (reads of the pipeline database), :mod:`webui.security`
(certificate, keys, users, tokens, login limiter), :mod:`webui.i18n`
(messages), :mod:`webui.server` (the HTTPS loop systemd runs).

Invariant: the page writes nothing to the pipeline but command requests
(:mod:`appliance.commands`), which the legs carry out and the audit log keeps.
"""
