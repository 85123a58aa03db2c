"""The embeddings endpoint through the official `openai` client: which model, its limits, vectors.

Every failure a user can fix (no gateway at the address, a refused key, a model it does not serve)
becomes one ConfigError naming the thing, raised before anything is written.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import httpx
import openai

from embedstack.client_setup import GATEWAY_PORT
from embedstack.errors import ConfigError

DEFAULT_BASE_URL = f"http://127.0.0.1:{GATEWAY_PORT}/v1"  # what `make serve` runs
# When /v1/models does not say (an endpoint other than embedstack's gateway), assume the smallest
# common limit: chunks come out smaller, never truncated.
FALLBACK_MAX_TOKENS = 256


@dataclass(frozen=True, slots=True)
class ModelInfo:
    id: str
    dimension: int
    max_tokens: int
    max_tokens_known: bool


class Endpoint:
    def __init__(
        self,
        base_url: str,
        api_key: str,
        model: str | None,
        *,
        http_client: httpx.Client | None = None,
        batch_size: int = 64,
        parallel: int = 4,
    ):
        self.base_url = base_url
        self.client = openai.OpenAI(
            base_url=base_url, api_key=api_key or "none", max_retries=3, timeout=300, http_client=http_client
        )
        self.requested_model = model
        self.batch_size = batch_size
        self.parallel = parallel
        self.model: ModelInfo | None = None

    def _fail(self, exc: Exception, doing: str) -> ConfigError:
        if isinstance(exc, openai.AuthenticationError | openai.PermissionDeniedError):
            return ConfigError(f"the gateway at {self.base_url} refused the API key ({exc.status_code}) {doing}")
        if isinstance(exc, openai.APIConnectionError):
            return ConfigError(f"cannot reach the gateway at {self.base_url} {doing}: {exc.__cause__ or exc}")
        if isinstance(exc, openai.APIStatusError):
            return ConfigError(f"the gateway at {self.base_url} answered {exc.status_code} {doing}: {exc.message}")
        return ConfigError(f"the gateway at {self.base_url} failed {doing}: {exc}")

    def resolve(self) -> ModelInfo:
        """The model to embed with and its limits, from /v1/models; refuses a model not served."""
        try:
            served = list(self.client.models.list())
        except openai.OpenAIError as exc:
            raise self._fail(exc, "listing its models") from None
        if not served:
            raise ConfigError(f"the gateway at {self.base_url} serves no model")
        names = [m.id for m in served]
        wanted = self.requested_model or names[0]
        entry = next((m for m in served if m.id == wanted), None)
        if entry is None:
            raise ConfigError(
                f"the gateway at {self.base_url} does not serve model {wanted!r}; it serves: {', '.join(names)}"
            )
        extra = entry.model_extra or {}
        max_tokens = extra.get("max_tokens")
        dimension = extra.get("dimension")
        if not isinstance(dimension, int):
            dimension = len(self._embed_batch(["dimension probe"], "document", wanted)[0])
        self.model = ModelInfo(
            id=wanted,
            dimension=dimension,
            max_tokens=int(max_tokens) if isinstance(max_tokens, int) else FALLBACK_MAX_TOKENS,
            max_tokens_known=isinstance(max_tokens, int),
        )
        return self.model

    def _embed_batch(self, texts: Sequence[str], input_type: str, model: str | None = None) -> list[list[float]]:
        try:
            result = self.client.embeddings.create(
                model=model or self.model.id,
                input=list(texts),
                encoding_format="float",
                # embedstack's gateway prepends the model's query or document instruction
                extra_body={"input_type": input_type},
            )
        except openai.OpenAIError as exc:
            raise self._fail(exc, "embedding") from None
        rows = sorted(result.data, key=lambda d: d.index)
        if len(rows) != len(texts):
            raise ConfigError(f"the gateway at {self.base_url} returned {len(rows)} vectors for {len(texts)} inputs")
        return [r.embedding for r in rows]

    def embed_documents(
        self, texts: Sequence[str], on_batch: Callable[[int], None] | None = None, input_type: str = "document"
    ) -> list[list[float]]:
        """Vectors for `texts`, in order: batches of `batch_size`, `parallel` of them in flight."""
        batches = [texts[i : i + self.batch_size] for i in range(0, len(texts), self.batch_size)]
        if not batches:
            return []
        out: list[list[float]] = []
        pool = ThreadPoolExecutor(max_workers=max(1, min(self.parallel, len(batches))))
        try:
            for vectors in pool.map(lambda b: self._embed_batch(b, input_type), batches):
                out.extend(vectors)
                if on_batch:
                    on_batch(len(vectors))
        finally:
            # a failure or Ctrl-C: the batches not started yet are dropped, not sent for nothing
            pool.shutdown(wait=True, cancel_futures=True)
        return out

    def embed_query(self, text: str) -> list[float]:
        return self._embed_batch([text], "query")[0]
