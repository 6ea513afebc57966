"""Registered voices: POST /v1/voices, GET /v1/voices, DELETE /v1/voices/{name}."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Form, Response

from orchestrator.responses import ERROR_RESPONSES
from orchestrator.routers.deps import ServiceDep
from orchestrator.schemas import VoiceForm, VoiceListResponse, VoiceResponse

router = APIRouter(tags=["voices"])


@router.post("/v1/voices", status_code=201, response_model=VoiceResponse,
             responses={409: ERROR_RESPONSES[422] | {"description": "A voice of that name exists."},
                        **ERROR_RESPONSES},
             summary="Register a voice: store its audio once and cache its conditioning")
async def register_voice(form: Annotated[VoiceForm, Form(media_type="multipart/form-data")],
                         service: ServiceDep) -> VoiceResponse:
    return await service.register_voice(form)


@router.get("/v1/voices", response_model=VoiceListResponse, summary="List registered voices")
async def list_voices(service: ServiceDep) -> VoiceListResponse:
    return VoiceListResponse(voices=service.list_voices())


@router.delete("/v1/voices/{name}", status_code=204, response_class=Response,
               responses={404: ERROR_RESPONSES[404]}, summary="Delete a registered voice")
async def delete_voice(name: str, service: ServiceDep) -> Response:
    await service.delete_voice(name)
    return Response(status_code=204)
