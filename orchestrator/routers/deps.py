"""Dependencies shared by the routers."""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends, Request

from orchestrator.reporting import Reporter
from orchestrator.service import TtsService


def get_service(request: Request) -> TtsService:
    return request.app.state.service


def get_reporter(request: Request) -> Reporter:
    return request.app.state.service.reporter


ServiceDep = Annotated[TtsService, Depends(get_service)]
ReporterDep = Annotated[Reporter, Depends(get_reporter)]
