"""Dependencies as ``Annotated`` aliases: settings and the model registry from app state.

They are ``async def`` on purpose: FastAPI runs a plain ``def`` dependency in its thread pool, a
thread hop per request for what is only an attribute read.
"""
from __future__ import annotations

from typing import Annotated

from fastapi import Depends, Request

from service.registry import ModelRegistry
from service.sessions.manager import SessionManager
from service.settings import Settings


async def get_registry(request: Request) -> ModelRegistry:
    return request.app.state.registry


async def get_app_settings(request: Request) -> Settings:
    return request.app.state.settings


async def get_sessions(request: Request) -> SessionManager:
    return request.app.state.sessions


Registry = Annotated[ModelRegistry, Depends(get_registry)]
AppSettings = Annotated[Settings, Depends(get_app_settings)]
Sessions = Annotated[SessionManager, Depends(get_sessions)]
