"""The HTTP API's areas, one :class:`fastapi.APIRouter` each, all mounted by :func:`twin.api.create_app`.

=================  =====================================================  ==========================
area               paths                                                  module
=================  =====================================================  ==========================
health, metrics    ``/healthz``, ``/metrics``                             :mod:`twin.routes.health`
tags, series       ``/api/v1/tags``, ``latest``, ``series/{tag}``,        :mod:`twin.routes.tags`
                   ``rolls``
dead letters       ``/api/v1/dead-letters``                               :mod:`twin.routes.dead_letters`
status, stream     ``/api/v1/status``, ``/api/v1/stream`` (SSE)           :mod:`twin.routes.status`
models             ``/api/v1/models``, ``/api/v1/models/reload``          :mod:`twin.routes.models`
predictions        ``/api/v1/predictions/latest``                         :mod:`twin.routes.predictions`
cell               ``/api/v1/cell/discharge``, ``cell/proposals/{id}``    :mod:`twin.routes.cell`
lab results        ``/api/v1/lab/quantities``, ``results``, ``results/csv``, :mod:`twin.routes.lab`
                   ``results/{id}``, ``drift``
shadow models      ``/api/v1/models/shadow``, ``comparison``,             :mod:`twin.routes.shadow`
                   ``requests``, ``requests/{id}/approve|reject|audit``
export             ``/api/v1/export/...``                                 :mod:`twin.export`
feedback           ``/api/v1/proposals``, ``targets``, ...                :mod:`twin.feedback.routes`
ontology           ``/api/v1/ontology/...``                               :mod:`ontology.api`
AAS                ``/api/v1/aas/...``                                    :mod:`twin.aas_api`
API docs           ``/docs``, ``/redoc``                                  :mod:`twin.apidocs`
web pages          ``/`` and ``/static``                                  :mod:`twin.routes.web`
=================  =====================================================  ==========================

Shared pieces (time parsing, bearer-token auth) are in :mod:`twin.routes.common`. A new area is a
module with ``make_router(daemon) -> APIRouter`` and one ``include_router`` line in ``create_app``.
"""
