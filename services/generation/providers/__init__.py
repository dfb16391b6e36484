"""Model provider adapters behind one interface, and the router that picks one.

``base`` defines the interface (request, result, errors); ``local``,
``openai_images`` and ``async_task`` are the adapters; ``router`` builds them
from config and runs a request with retries, circuit breakers and failover.
"""

from services.generation.providers.base import (
    CAMERA_MOVES,
    PermanentProviderError,
    Provider,
    ProviderError,
    ProviderOutput,
    ProviderRequest,
    ProviderResult,
    Shot,
    TransientProviderError,
)
from services.generation.providers.router import (
    ProviderConfigError,
    RoutedResult,
    Router,
    build_provider,
    build_router,
)

__all__ = [
    "CAMERA_MOVES", "PermanentProviderError", "Provider", "ProviderConfigError", "ProviderError",
    "ProviderOutput", "ProviderRequest", "ProviderResult", "RoutedResult", "Router", "Shot",
    "TransientProviderError", "build_provider", "build_router",
]
