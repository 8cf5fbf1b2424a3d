"""Server limits and batching settings (CLI flags and environment map onto these)."""

from __future__ import annotations

from pydantic import BaseModel, Field

ADMIN_TOKEN_ENV = "MTLORA_ADMIN_TOKEN"


class ServerSettings(BaseModel):
    max_batch: int = Field(32, gt=0, description="inputs run through the engine together at most")
    max_wait_ms: float = Field(5.0, ge=0, description="how long the first queued input waits for company")
    max_queue: int = Field(512, gt=0, description="queued inputs beyond which requests get 503")
    max_inputs: int = Field(64, gt=0, description="inputs in one request")
    max_text_chars: int = Field(20_000, gt=0, description="characters in one text")
    max_body_bytes: int = Field(1 << 20, gt=0)
    retry_after_s: int = Field(1, gt=0, description="Retry-After sent with a 503")
