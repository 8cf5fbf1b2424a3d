"""Server limits and batching settings (CLI flags and environment map onto these)."""

from __future__ import annotations

from pydantic import BaseModel, Field, model_validator

ADMIN_TOKEN_ENV = "MTLORA_ADMIN_TOKEN"
# How `mtlora serve` hands its project file and settings to each uvicorn worker (`create_app_from_env`).
CONFIG_ENV = "MTLORA_CONFIG"
SETTINGS_ENV = "MTLORA_SERVER_SETTINGS"


class ServerSettings(BaseModel):
    max_batch: int = Field(32, gt=0, description="inputs per engine call at most")
    # Finite: an endless wait would hold every request until max_batch inputs came (JSON also has no inf).
    max_wait_ms: float = Field(5.0, ge=0, allow_inf_nan=False,
                               description="how long a request waits for others to batch with")
    max_queue: int = Field(512, gt=0, description="queued inputs beyond which requests get 503")
    max_inputs: int = Field(64, gt=0, description="inputs in one request at most (413 beyond)")
    max_text_chars: int = Field(20_000, gt=0, description="characters in one text at most (413 beyond)")
    max_body_bytes: int = Field(1 << 20, gt=0, description="request body size at most (413 beyond)")
    retry_after_s: int = Field(1, gt=0, description="Retry-After sent with a 503")

    @model_validator(mode="after")
    def _queue_holds_a_request(self) -> ServerSettings:
        if self.max_queue < self.max_inputs:  # a full-size request could never be queued: 503 "retry" for ever
            raise ValueError(f"max_queue ({self.max_queue}) is below max_inputs ({self.max_inputs}): a request of "
                             "that many inputs could never be queued; raise max_queue or lower max_inputs")
        return self
