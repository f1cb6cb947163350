"""Dependencies as ``Annotated`` aliases: settings and the model registry from app state."""
from __future__ import annotations

from typing import Annotated

from fastapi import Depends, Request

from service.registry import ModelRegistry
from service.sessions.manager import SessionManager
from service.settings import Settings


def get_registry(request: Request) -> ModelRegistry:
    return request.app.state.registry


def get_app_settings(request: Request) -> Settings:
    return request.app.state.settings


def get_sessions(request: Request) -> SessionManager:
    return request.app.state.sessions


Registry = Annotated[ModelRegistry, Depends(get_registry)]
AppSettings = Annotated[Settings, Depends(get_app_settings)]
Sessions = Annotated[SessionManager, Depends(get_sessions)]
