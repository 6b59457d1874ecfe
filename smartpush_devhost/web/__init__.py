"""The development host's web pages: Apps > Integrations, Contacts > Import, Contacts.

``smartpush serve`` runs :func:`smartpush_devhost.web.app.create_app` on a local HTTP
server (:mod:`smartpush_devhost.web.server`). The pages and the JSON API under ``/api``
call the same hooks as the command line; every store's pages live under
``/stores/<store>/``.
"""
