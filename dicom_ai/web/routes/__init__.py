"""The web application's routes, one :class:`fastapi.APIRouter` per group, in the order
:func:`dicom_ai.web.app.create_app` includes them:

- :mod:`~dicom_ai.web.routes.node`: ``/health`` and ``/metrics``, open to all;
- :mod:`~dicom_ai.web.routes.login`: ``/login`` and ``/logout``;
- :mod:`~dicom_ai.web.routes.pages`: the worklist and study pages (readers);
- :mod:`~dicom_ai.web.routes.admin`: the admin page (admins);
- :mod:`~dicom_ai.web.routes.api`: the REST API under ``/api`` and its ``/openapi.json``;
- :mod:`~dicom_ai.web.routes.viewer`: the slice viewer's API.

Each reads the node's state through :func:`dicom_ai.web.deps.context`.
"""
