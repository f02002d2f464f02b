"""The Ray Serve application: generation and decoding over HTTP, OpenAI-compatible routes included.

    fizzbot serve --config configs/serve.yaml [serve.model_dir=...]       (starts Ray and Serve)
    serve run configs/serve_app.yaml                                      (Ray's own CLI)

Routes: POST /v1/generate, /v1/decode, /v1/completions, /v1/chat/completions (`stream: true` as
server-sent events), GET /v1/models, /healthz. Each replica runs one GenerationEngine whose
continuous-batching loop lets concurrent requests share forward passes; admission control answers
503 at once when `max_concurrent_requests + max_queued_requests` are already in flight.

Message contexts are read by each model's own rules (fizzbot.chat.conversation.ChatRules: the
checkpoint's context budget and opted-out people, and `serve.unknown_speakers`): a name the model has
never seen takes the guest token, and the answer names it back where that is unambiguous.
"""

import asyncio
import hashlib
import json
import logging
import threading
import time
import uuid
from pathlib import Path
from typing import Any, Literal

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, StreamingResponse
from pydantic import BaseModel, ConfigDict, Field
from ray import serve
from starlette.exceptions import HTTPException as StarletteHTTPException

from fizzbot.chat.conversation import ChatRules, Prompt
from fizzbot.chat.render import NAME_SEPARATOR
from fizzbot.chat.tokens import EOT
from fizzbot.config import FizzbotConfig, ServeConfig, load_config
from fizzbot.serve import guard

logger = logging.getLogger("fizzbot.serve")


class APIError(Exception):
    def __init__(self, status: int, message: str, type_: str = "invalid_request_error", param: str | None = None):
        self.status, self.message, self.type, self.param = status, message, type_, param


def error_response(status: int, message: str, type_: str, param: str | None = None) -> JSONResponse:
    return JSONResponse(status_code=status, content={"error": {"message": message, "type": type_, "param": param}})


# --- request bodies --------------------------------------------------------------------------------


class _Body(BaseModel):
    model_config = ConfigDict(extra="ignore")


class ContextMessage(_Body):
    username: str | None = None
    speaker: str | None = None
    content: str


class GenerateBody(_Body):
    model: str | None = Field(None, description="The adapter (community) that answers; default the server's first.")
    context: list[ContextMessage] | str = Field(default_factory=list, description="Messages, or raw text with speaker tokens.")
    max_new_tokens: int | None = Field(None, ge=1)
    min_new_tokens: int = Field(0, ge=0, description="No message ends before this many tokens (vLLM's min_tokens, per turn).")
    temperature: float | None = Field(None, ge=0.0, le=5.0)
    top_p: float | None = Field(None, gt=0.0, le=1.0)
    top_k: int | None = Field(None, ge=0)
    repetition_penalty: float | None = Field(None, gt=0.0, le=5.0)
    turns: int | None = Field(None, ge=1)
    eos_stop: bool = True
    seed: int | None = None
    speaker: str | None = Field(None, description="Force who speaks first (username or token).")
    forbid_speakers: list[str] = Field(default_factory=list)


class DecodeBody(_Body):
    text: str
    model: str | None = None


class _OpenAIBody(_Body):
    """The sampling fields the OpenAI completions and chat routes share."""

    model: str | None = None
    max_tokens: int | None = Field(None, ge=1)
    min_tokens: int = Field(0, ge=0, description="vLLM's extension: no message ends before this many tokens.")
    temperature: float | None = Field(None, ge=0.0, le=2.0)
    top_p: float | None = Field(None, gt=0.0, le=1.0)
    n: int = Field(1, ge=1)
    stop: str | list[str] | None = None
    seed: int | None = None
    stream: bool = False
    repetition_penalty: float | None = Field(None, gt=0.0, le=5.0)

    @property
    def stops(self) -> list[str]:
        return [self.stop] if isinstance(self.stop, str) else list(self.stop or [])


class CompletionBody(_OpenAIBody):
    prompt: str | list[str]
    turns: int = Field(1, ge=1)


class ChatMessage(_Body):
    role: Literal["system", "user", "assistant", "developer", "tool"] = "user"
    content: str | None = None
    name: str | None = None


class ChatBody(_OpenAIBody):
    messages: list[ChatMessage]
    max_completion_tokens: int | None = Field(None, ge=1)
    speaker: str | None = Field(None, description="fizzbot extension: force who answers (and who earlier unnamed assistant turns were).")


# --- the application ---------------------------------------------------------------------------------

api = FastAPI(title="fizzbot", description="Continue a group chat as its members would.", version="0.1.0")
# The API key, body size and request size, checked before routing (fizzbot/serve/guard.py).
guard.install(api)


@api.exception_handler(APIError)
async def _api_error(_: Request, exc: APIError) -> JSONResponse:
    return error_response(exc.status, exc.message, exc.type, exc.param)


@api.exception_handler(RequestValidationError)
async def _validation_error(_: Request, exc: RequestValidationError) -> JSONResponse:
    first = exc.errors()[0] if exc.errors() else {}
    loc = []
    for part in first.get("loc", ()):
        if part == "body":
            continue
        if isinstance(part, str) and ("[" in part or part in ("str", "int", "list")):
            break  # pydantic names the union member it tried: the field itself is what the client needs
        loc.append(str(part))
    param = ".".join(loc) or None
    message = f"{param}: {first.get('msg', 'invalid request')}" if param else first.get("msg", "invalid request body")
    return error_response(422, message, "invalid_request_error", param)


@api.exception_handler(StarletteHTTPException)
async def _http_error(_: Request, exc: StarletteHTTPException) -> JSONResponse:
    return error_response(exc.status_code, str(exc.detail), "not_found_error" if exc.status_code == 404 else "invalid_request_error")


def _usage(prompt: int, completion: int) -> dict:
    return {"prompt_tokens": prompt, "completion_tokens": completion, "total_tokens": prompt + completion}


def _finish(result) -> str:
    return "length" if result.finish_reason == "length" else "stop"


def resolve_model_dir(cfg: FizzbotConfig) -> str:
    """The checkpoint to serve: serve.model_dir (a folder, or a URI each replica fetches), else the
    newest run's best complete checkpoint under run.dir (a folder or a URI)."""
    from fizzbot.artifacts import checkpoint as ckpt
    from fizzbot.artifacts import storage

    if cfg.serve.model_dir:
        if storage.is_uri(cfg.serve.model_dir):
            if not ckpt.is_complete(cfg.serve.model_dir):
                raise FileNotFoundError(f"serve.model_dir={cfg.serve.model_dir}: not a complete fizzbot checkpoint (no manifest, or files missing)")
            return cfg.serve.model_dir
        path = Path(cfg.serve.model_dir)
        if not path.is_dir():
            raise FileNotFoundError(f"serve.model_dir={cfg.serve.model_dir}: no such folder")
        ckpt.check_loadable(path)  # refused here, before a replica would fail on it over and over
        return str(path.resolve())
    latest = ckpt.find_latest(cfg.run.dir)
    return latest if storage.is_uri(latest) else str(Path(latest).resolve())


def resolve_adapters(cfg: FizzbotConfig) -> dict[str, str]:
    """serve.adapters with absolute paths (the replica may run elsewhere), each checked to exist."""
    found = {}
    for name, folder in cfg.serve.adapters.items():
        path = Path(folder)
        if not (path / "adapter_config.json").is_file():
            raise FileNotFoundError(f"serve.adapters.{name}={folder}: no LoRA checkpoint there (no adapter_config.json)")
        found[name] = str(path.resolve())
    return found


class _Job:
    """One engine request as the asyncio side sees it: its future, deadline and in-flight count."""

    def __init__(self, loop: asyncio.AbstractEventLoop, deadline: float):
        self.loop, self.deadline = loop, deadline
        self.future: asyncio.Future = loop.create_future()
        self.request = None
        self.counted = None

    def done(self, outcome) -> None:  # from the engine's thread
        self.loop.call_soon_threadsafe(lambda: self.future.done() or self.future.set_result(outcome))

    def release(self) -> None:
        if self.counted is not None:
            self.counted.in_flight -= 1
            self.counted = None


class _Deltas:
    """Text deltas from the engine's thread, taken by the event loop all at once (one wake-up pending at most)."""

    def __init__(self, loop: asyncio.AbstractEventLoop):
        self.loop = loop
        self.parts: list[str] = []
        self.lock = threading.Lock()
        self.ready = asyncio.Event()
        self.signalled = False

    def put(self, text: str) -> None:
        with self.lock:
            self.parts.append(text)
            if self.signalled:
                return
            self.signalled = True
        self.loop.call_soon_threadsafe(self.ready.set)

    async def wait(self) -> None:
        await self.ready.wait()

    def take(self) -> str:
        with self.lock:
            text, self.parts, self.signalled = "".join(self.parts), [], False
            self.ready.clear()
        return text


@serve.deployment(name="fizzbot", health_check_period_s=10, health_check_timeout_s=30)
@serve.ingress(api)
class FizzbotServer:
    """One replica: a loaded checkpoint, its generation engine, and the HTTP routes."""

    def __init__(self, config: dict, model_dir: str | None = None):
        self.cfg = FizzbotConfig.model_validate(config)
        self.limits: ServeConfig = self.cfg.serve
        guard.configure(self.limits)
        self.model_dir: str | None = None
        self.engine = None
        self.rules: dict[str | None, ChatRules] = {}  # each model's own context rules, by adapter (None: the one model)
        self.in_flight = 0
        self.closing = False
        self.created = int(time.time())
        self.replica = uuid.uuid4().hex[:12]  # tells a reconfigured replica from a replaced one
        self.folders: dict[str, str] = {}
        if model_dir is not None:  # built directly (the models usually come with the user_config: reconfigure)
            self._load_model(model_dir)

    def _load_model(self, model_dir: str) -> None:
        """Serve one checkpoint (its adapter merged); the engine it replaces finishes its requests in flight."""
        from fizzbot.infer.engine import engine_from_checkpoint

        engine = engine_from_checkpoint(model_dir, **self._engine_options())
        rules = self._read_rules(model_dir)
        old, self.engine = self.engine, engine
        self.rules[None], self.model_dir = rules, model_dir
        self._started()
        logger.info("fizzbot replica ready: %s", model_dir)
        if old is not None:  # new requests go to the new engine from here; the old one drains
            threading.Thread(target=old.stop, kwargs={"drain_s": self.limits.request_timeout_s}, daemon=True).start()

    def _started(self) -> None:
        from fizzbot.serve.metrics import ServerMetrics

        if getattr(self, "metrics", None) is None:
            self.metrics = ServerMetrics(self.engine)
        self.metrics.engine = self.engine  # one set of metrics for the replica, whichever engine serves
        self.engine.observer = self.metrics
        self.engine.start()

    def _engine_options(self) -> dict:
        g, lim = self.cfg.generate, self.limits
        return dict(
            device=g.device,
            tokenizer_model=g.tokenizer_model,
            max_prompt_tokens=lim.max_prompt_tokens,
            max_batch_size=lim.max_concurrent_requests,
            compile=g.compile,
            # Whatever the limits allow fits: a request within them is never cut short by the cache.
            max_cache_len=max(g.max_cache_len, lim.max_prompt_tokens + lim.max_turns * (lim.max_new_tokens + 3)),
            kv_cache_tokens=g.kv_cache_tokens,
            prefill_chunk_tokens=g.prefill_chunk_tokens,
        )

    async def reconfigure(self, user_config: dict) -> None:
        """Serve's user_config, applied to the running replica in place (no restart):
        {"model_dir": checkpoint} serves that checkpoint, replacing the one served (promotion: the new
        one loads beside it, then takes the new requests; those in flight finish on the old one);
        {"adapters": {name: checkpoint}} serves those adapters of one base: new names load into free
        slots beside the running rows, a name given another checkpoint switches to it once loaded,
        names left out stop being served (their slots stay taken until a restart). Loading runs in a
        thread: the replica keeps answering meanwhile."""
        model_dir = user_config.get("model_dir")
        if model_dir and model_dir != self.model_dir:
            await asyncio.to_thread(self._load_model, str(model_dir))
        adapters = dict(user_config.get("adapters") or {})
        if adapters:
            await asyncio.to_thread(self._load_adapters, adapters)

    def _load_adapters(self, adapters: dict[str, str]) -> None:
        if self.engine is None:
            from fizzbot.infer.lora import engine_from_adapters

            options = self._engine_options()
            options.pop("tokenizer_model")
            self.engine = engine_from_adapters(adapters, max_adapters=self.limits.max_adapters, max_rank=self.limits.max_lora_rank, **options)
            self.rules.update({name: self._read_rules(folder) for name, folder in adapters.items()})
            self._started()
            self.folders = {name: str(folder) for name, folder in adapters.items()}
            logger.info("fizzbot replica ready: adapters %s", ", ".join(adapters))
            return
        for name, folder in adapters.items():
            if self.folders.get(name) == str(folder):
                continue
            rules = self._read_rules(folder)
            if name not in self.engine.adapter_index:
                self.rules[name] = rules
                self.engine.add_adapter(name, folder)
                logger.info("adapter %s added: %s", name, folder)
            else:  # another checkpoint for a served name: load it aside, then switch the name to it
                aside = f"{name}@{uuid.uuid4().hex[:8]}"
                self.engine.add_adapter(aside, folder)
                self.rules[name] = rules
                self.engine.adapter_index[name] = self.engine.adapter_index.pop(aside)
                logger.info("adapter %s now serves %s", name, folder)
            self.folders[name] = str(folder)
        for name in [n for n in self.engine.adapters if n not in adapters]:
            del self.engine.adapter_index[name]
            self.folders.pop(name, None)
            logger.info("adapter %s no longer served", name)

    def settings(self) -> dict:
        """What this application was built with and what it serves (for `swap_model`, through a handle)."""
        return {"config": self.cfg.model_dump(mode="json"), "model_dir": self.model_dir, "adapters": dict(self.folders)}

    def _read_rules(self, folder: str) -> ChatRules:
        from fizzbot.artifacts.checkpoint import fetch_checkpoint
        from fizzbot.artifacts.loading import chat_rules

        return chat_rules(fetch_checkpoint(folder), self.limits.unknown_speakers)

    def _rules_for(self, adapter: str | None) -> ChatRules:
        return self.rules.get(adapter) or self.rules.get(None) or ChatRules(unknown_speakers=self.limits.unknown_speakers)

    def __del__(self) -> None:
        # Serve calls this when the replica shuts down, after its graceful wait for ongoing requests:
        # whatever is still in flight finishes (up to the request timeout) or fails with an answer.
        self.closing = True
        engine = getattr(self, "engine", None)
        if engine is not None:
            engine.stop(drain_s=self.limits.request_timeout_s)

    async def check_health(self) -> None:
        thread = self.engine._thread if self.engine is not None else None
        if thread is None or not thread.is_alive():
            raise RuntimeError("the generation loop is not running")

    # --- plumbing ----------------------------------------------------------------------------------
    def _authorize(self, request: Request) -> None:
        key = self.limits.api_key
        if not key:
            return
        if not guard.key_matches(request.headers.get("authorization"), key):
            raise APIError(401, "missing or wrong API key (send `Authorization: Bearer <key>`)", "authentication_error")

    def _admit(self, count: int) -> None:
        capacity = self.limits.max_concurrent_requests + self.limits.max_queued_requests
        if self.closing or self.in_flight + count > capacity:
            self.metrics.outcome(503, None)
        if self.closing:
            raise APIError(503, "the server is shutting down; retry on another replica", "overloaded_error")
        if self.in_flight + count > capacity:
            raise APIError(503, f"server busy: {self.in_flight} requests in flight (limit {capacity}); retry later", "overloaded_error")

    def _choose(self, model: str | None) -> str | None:
        """The adapter a request's `model` names (None: the default model)."""
        if model is None or model == self.limits.model_name or not self.engine.adapters:
            return None  # one merged model answers to any name, as before adapters
        if model not in self.engine.adapter_index:
            raise APIError(404, f"model {model!r} is not served here; GET /v1/models lists them", "not_found_error", param="model")
        return model

    def _speakers(self, speaker: str | None, forbid=(), adapter: str | None = None) -> tuple[str | None, str | None, tuple[str, ...]]:
        """(token to force, the forced speaker's name where it takes the guest token, tokens to forbid)."""
        from fizzbot.chat.conversation import speaker_to_force, tokens_to_forbid

        smap, rules = self.engine.vocab_for(adapter).speaker_map, self._rules_for(adapter)
        try:
            force, forced_guest = speaker_to_force(speaker, smap, rules) if speaker else (None, None)
        except KeyError as exc:
            raise APIError(400, str(exc.args[0]), param="speaker") from None
        try:
            return force, forced_guest, tokens_to_forbid(forbid, smap, rules)
        except KeyError as exc:
            raise APIError(400, str(exc.args[0]), param="forbid_speakers") from None

    def _sampling(self, *, max_new_tokens, temperature, top_p, repetition_penalty, turns, seed, eos_stop=True, force=None, forbidden=(),
                  stop=(), top_k=None, min_new_tokens=0, min_param="min_new_tokens"):
        from fizzbot.infer.engine import SamplingParams

        g, lim = self.cfg.generate, self.limits
        if max_new_tokens is not None and max_new_tokens > lim.max_new_tokens:
            raise APIError(400, f"max_new_tokens {max_new_tokens} is over this server's limit of {lim.max_new_tokens}", param="max_new_tokens")
        if turns is not None and turns > lim.max_turns:
            raise APIError(400, f"turns {turns} is over this server's limit of {lim.max_turns}", param="turns")
        budget = max_new_tokens or g.max_new_tokens
        if min_new_tokens > budget:
            raise APIError(400, f"the least number of tokens ({min_new_tokens}) is over the most ({budget})", param=min_param)
        return SamplingParams(
            max_new_tokens=budget,
            min_new_tokens=min_new_tokens,
            temperature=g.temperature if temperature is None else temperature,
            top_p=g.top_p if top_p is None else top_p,
            top_k=g.top_k if top_k is None else top_k,
            repetition_penalty=g.repetition_penalty if repetition_penalty is None else repetition_penalty,
            turns=turns or 1,
            eos_stop=eos_stop,
            seed=seed,
            force_speaker=force,
            forbid_speakers=tuple(forbidden),
            stop=tuple(stop),
        )

    def _prompt_from_messages(self, messages: list[dict], adapter: str | None = None) -> Prompt:
        """The model's own rules: its message and character budget (what it was trained on), opted-out
        people, unknown speakers under `serve.unknown_speakers`."""
        from fizzbot.chat.conversation import encode_conversation

        try:
            return encode_conversation(messages, self.engine.vocab_for(adapter).speaker_map, self._rules_for(adapter))
        except KeyError as exc:
            raise APIError(400, str(exc.args[0]), param="messages") from None

    INLINE_PROMPT_CHARS = 4000  # shorter prompts are tokenised on the event loop: a thread hop costs more

    async def _start(self, prompt: str, params, on_text=None, adapter: str | None = None, strict_prompt: bool = False) -> "_Job":
        """Tokenise and check the request (long prompts off the event loop), then hand it to the engine.
        Refusals (400: it cannot fit or run; 503: shutting down) come here, before any response starts."""
        from fizzbot.infer.engine import EngineClosed, EngineError, PromptTooLong, Request as EngineRequest

        loop = asyncio.get_running_loop()
        job = _Job(loop, time.monotonic() + self.limits.request_timeout_s)
        request = EngineRequest(prompt, params, on_text=on_text, on_done=job.done, adapter=adapter, strict_prompt=strict_prompt)
        job.request = request
        self.in_flight += 1
        job.counted = self
        try:
            if len(prompt) > self.INLINE_PROMPT_CHARS:
                await loop.run_in_executor(None, self.engine.prepare, request)
            else:
                self.engine.prepare(request)
            self.engine.submit(request)
        except EngineError as exc:
            job.release()
            self.metrics.outcome(400, adapter)
            raise APIError(400, str(exc), param="prompt" if isinstance(exc, PromptTooLong) else None) from None
        except EngineClosed as exc:
            job.release()
            self.metrics.outcome(503, adapter)
            raise APIError(503, str(exc), "overloaded_error") from None
        except BaseException:
            job.release()
            raise
        return job

    async def _finish(self, job: "_Job"):
        """Await the engine's answer, within the request timeout; cancels the request if the client goes away."""
        try:
            outcome = await self._outcome(job)
        except APIError as exc:
            self.metrics.outcome(exc.status, job.request.adapter)
            raise
        except asyncio.CancelledError:
            self.metrics.outcome(499, job.request.adapter)  # the client closed the connection (nginx's code)
            raise
        self.metrics.outcome(200, job.request.adapter)
        return outcome

    async def _outcome(self, job: "_Job"):
        from fizzbot.infer.engine import EngineClosed, EngineError

        try:
            outcome = await asyncio.wait_for(asyncio.shield(job.future), timeout=max(0.0, job.deadline - time.monotonic()))
        except asyncio.TimeoutError:
            job.request.cancelled = True
            raise APIError(504, f"the request did not finish within serve.request_timeout_s={self.limits.request_timeout_s:g}s",
                           "timeout_error") from None
        except asyncio.CancelledError:
            job.request.cancelled = True  # the client went away: the engine frees its slot at the next step
            raise
        finally:
            job.release()
        if isinstance(outcome, BaseException):
            if isinstance(outcome, EngineError):
                raise APIError(400, str(outcome))
            if isinstance(outcome, EngineClosed):
                raise APIError(503, str(outcome), "overloaded_error")
            logger.warning("generation failed: %s: %s", type(outcome).__name__, outcome)
            raise APIError(500, f"generation failed: {type(outcome).__name__}: {outcome}", "server_error")
        if self.limits.log_content:
            logger.info("generated %r", outcome.text)
        else:
            logger.info("generated %d tokens in %.2fs (prompt %d tokens)", outcome.completion_tokens, outcome.seconds, outcome.prompt_tokens)
        return outcome

    async def _run(self, prompt: str, params, adapter: str | None = None, strict_prompt: bool = False):
        return await self._finish(await self._start(prompt, params, adapter=adapter, strict_prompt=strict_prompt))

    async def _stream(self, prompt: str, params, make_chunk, finish_chunk, adapter: str | None = None,
                      strict_prompt: bool = False) -> StreamingResponse:
        """Server-sent events: text deltas, a final chunk, then [DONE]; an error mid-stream is an `error`
        event, then [DONE]. Events are at least serve.stream_interval_s apart (the first goes at once):
        the text made meanwhile, or while the client was behind, goes out as one event. Every event
        crosses Serve's proxy; one per token per stream is what held streaming to a quarter of the
        non-streamed rate at 64 clients."""
        deltas = _Deltas(asyncio.get_running_loop())
        job = await self._start(prompt, params, on_text=deltas.put, adapter=adapter, strict_prompt=strict_prompt)

        def event(payload: dict) -> str:
            return f"data: {json.dumps(payload)}\n\n"

        interval = self.limits.stream_interval_s

        async def events():
            finishing = asyncio.ensure_future(self._finish(job))
            sent = 0.0
            try:
                while True:
                    waiter = asyncio.ensure_future(deltas.wait())
                    await asyncio.wait({waiter, finishing}, return_when=asyncio.FIRST_COMPLETED)
                    waiter.cancel()
                    pause = sent + interval - time.monotonic()
                    if pause > 0 and not finishing.done():  # text made meanwhile joins this event
                        await asyncio.wait({finishing}, timeout=pause)
                    text = deltas.take()
                    if text:
                        chunk = make_chunk(text)
                        if chunk is not None:
                            yield event(chunk)
                            sent = time.monotonic()
                    if finishing.done():
                        break
                try:
                    result = finishing.result()
                except APIError as exc:
                    yield event({"error": {"message": exc.message, "type": exc.type, "param": exc.param, "code": exc.status}})
                except Exception as exc:  # noqa: BLE001 - the stream must still end properly
                    yield event({"error": {"message": f"{type(exc).__name__}: {exc}", "type": "server_error", "param": None, "code": 500}})
                else:
                    yield event(finish_chunk(result))
                yield "data: [DONE]\n\n"
            finally:
                if not finishing.done():  # the client went away (or the server is stopping)
                    finishing.cancel()
                    job.request.cancelled = True
                    job.release()

        return StreamingResponse(events(), media_type="text/event-stream", headers={"Cache-Control": "no-cache"})

    # --- routes ------------------------------------------------------------------------------------
    @api.get("/healthz")
    async def healthz(self) -> dict:
        await self.check_health()
        return {"status": "ok", "model": self.limits.model_name, "in_flight": self.in_flight, "replica": self.replica,
                "engine": self.engine.stats()}

    @api.get("/v1/models")
    async def models(self, request: Request) -> dict:
        self._authorize(request)
        if not self.engine.adapters:
            entries = [(self.limits.model_name, self.model_dir)]
        else:
            entries = [(name, self.folders.get(name)) for name in self.engine.adapters]
        return {"object": "list", "data": [{"id": name, "object": "model", "created": self.created, "owned_by": "fizzbot", "root": root}
                                           for name, root in entries]}

    @api.post("/v1/decode")
    async def decode(self, body: DecodeBody, request: Request) -> dict:
        from fizzbot.chat.conversation import decode, format_lines

        self._authorize(request)
        messages = decode(body.text, self.engine.vocab_for(self._choose(body.model)).speaker_map)
        return {"messages": [m.to_json() for m in messages], "text": format_lines(messages)}

    @api.post("/v1/generate")
    async def generate(self, body: GenerateBody, request: Request) -> dict:
        from fizzbot.chat.conversation import decode

        self._authorize(request)
        adapter = self._choose(body.model)
        if isinstance(body.context, str):
            prompt = Prompt(body.context)
        else:
            prompt = self._prompt_from_messages([m.model_dump() for m in body.context], adapter)
        force, forced_guest, forbidden = self._speakers(body.speaker, body.forbid_speakers, adapter)
        params = self._sampling(
            max_new_tokens=body.max_new_tokens, temperature=body.temperature, top_p=body.top_p, top_k=body.top_k,
            repetition_penalty=body.repetition_penalty, turns=body.turns or self.cfg.generate.turns, seed=body.seed,
            eos_stop=body.eos_stop, force=force, forbidden=forbidden, min_new_tokens=body.min_new_tokens,
        )
        self._admit(1)
        result = await self._run(prompt.text, params, adapter)
        smap = self.engine.vocab_for(adapter).speaker_map
        messages = decode(result.text, smap, prompt.speaker_names(smap, forced_guest), forced_guest)
        return {
            "raw": result.text,
            "messages": [m.to_json() for m in messages],
            "finish_reason": result.finish_reason,
            # Left out by the model's message/character budget, then by the token budget.
            "dropped_messages": prompt.dropped + result.dropped_messages,
            "usage": _usage(result.prompt_tokens, result.completion_tokens),
        }

    @api.post("/v1/completions")
    async def completions(self, body: CompletionBody, request: Request):
        self._authorize(request)
        adapter = self._choose(body.model)
        prompts = [body.prompt] if isinstance(body.prompt, str) else list(body.prompt)
        if not prompts:
            raise APIError(400, "prompt is empty", param="prompt")
        self._check_n(body.n)
        if body.stream and (len(prompts) > 1 or body.n > 1):
            raise APIError(400, "stream=true takes one prompt and n=1", param="stream")
        created, rid = int(time.time()), f"cmpl-{uuid.uuid4().hex[:24]}"
        model = body.model or self.limits.model_name

        def params_for(i: int):
            seed = None if body.seed is None else body.seed + i
            return self._sampling(max_new_tokens=body.max_tokens, temperature=body.temperature, top_p=body.top_p,
                                  repetition_penalty=body.repetition_penalty, turns=body.turns, seed=seed, stop=body.stops,
                                  min_new_tokens=body.min_tokens, min_param="min_tokens")

        if body.stream:
            params = params_for(0)
            self._admit(1)

            def chunk(delta: str) -> dict:
                return {"id": rid, "object": "text_completion", "created": created, "model": model,
                        "choices": [{"text": delta, "index": 0, "logprobs": None, "finish_reason": None}]}

            def final(result) -> dict:
                return {"id": rid, "object": "text_completion", "created": created, "model": model,
                        "choices": [{"text": "", "index": 0, "logprobs": None, "finish_reason": _finish(result)}],
                        "usage": _usage(result.prompt_tokens, result.completion_tokens)}

            return await self._stream(prompts[0], params, chunk, final, adapter, strict_prompt=True)
        jobs = [(p, params_for(i)) for p in prompts for i in range(body.n)]
        self._admit(len(jobs))
        results = await asyncio.gather(*(self._run(p, params, adapter, strict_prompt=True) for p, params in jobs))
        return {
            "id": rid, "object": "text_completion", "created": created, "model": model,
            "choices": [{"text": r.text, "index": i, "logprobs": None, "finish_reason": _finish(r)} for i, r in enumerate(results)],
            "usage": _usage(sum(r.prompt_tokens for r in results), sum(r.completion_tokens for r in results)),
        }

    @api.post("/v1/chat/completions")
    async def chat_completions(self, body: ChatBody, request: Request):
        from fizzbot.chat.conversation import decode

        self._authorize(request)
        adapter = self._choose(body.model)
        self._check_n(body.n)
        if body.stream and body.n > 1:
            raise APIError(400, "stream=true takes n=1", param="stream")
        context = []
        for m in body.messages:
            if m.role in ("system", "developer", "tool"):
                continue  # the model knows no instructions: only the channel's own messages count
            name = m.name
            if not name and m.role == "user":
                name = self.limits.default_username
            elif not name and m.role == "assistant":
                # The model's own earlier turns: spoken by whom it is told to speak as.
                name = body.speaker or self.limits.assistant_name
            # Unnamed still: the guest token (an `anonymous` message).
            context.append({"username": name, "content": m.content or "", "anonymous": not name})
        prompt = self._prompt_from_messages(context, adapter)
        force, forced_guest, _ = self._speakers(body.speaker, (), adapter)
        max_tokens = body.max_completion_tokens or body.max_tokens
        created, rid = int(time.time()), f"chatcmpl-{uuid.uuid4().hex[:24]}"
        model = body.model or self.limits.model_name
        smap = self.engine.vocab_for(adapter).speaker_map
        names = prompt.speaker_names(smap, forced_guest)

        def params_for(i: int):
            seed = None if body.seed is None else body.seed + i
            return self._sampling(max_new_tokens=max_tokens, temperature=body.temperature, top_p=body.top_p,
                                  repetition_penalty=body.repetition_penalty, turns=1, seed=seed, force=force, stop=body.stops,
                                  min_new_tokens=body.min_tokens, min_param="min_tokens")

        def message_of(text: str) -> tuple[str | None, str]:
            decoded = decode(text, smap, names, forced_guest)
            if not decoded:
                return None, text.strip()
            return decoded[0].username, decoded[0].content

        if body.stream:
            params = params_for(0)
            self._admit(1)
            state = {"text": "", "sent": "", "named": False}

            def naming(text: str) -> bool:
                """A long-tail message written by name (data.name_others) whose name is not complete yet:
                the first chunk waits for it, so that it is never streamed as content."""
                head = text.lstrip()
                if state["named"] or not smap.other_named or not head.startswith(smap.other_token or "\0"):
                    return False
                rest = head[len(smap.other_token):]
                return NAME_SEPARATOR not in rest and EOT not in rest

            def chunk(delta: str) -> dict | None:
                state["text"] += delta
                if naming(state["text"]):
                    return None
                name, content = message_of(state["text"])
                if name is None:
                    return None
                out: dict[str, Any] = {}
                if not state["named"]:
                    out = {"role": "assistant", "name": name}
                    state["named"] = True
                new = content[len(state["sent"]):] if content.startswith(state["sent"]) else ""
                if new:
                    out["content"] = new
                    state["sent"] = content
                if not out:
                    return None
                return {"id": rid, "object": "chat.completion.chunk", "created": created, "model": model,
                        "choices": [{"index": 0, "delta": out, "finish_reason": None}]}

            def final(result) -> dict:
                delta: dict[str, Any] = {}
                if not state["named"] and smap.other_named:  # a message still waiting for its name when generation stopped
                    name, content = message_of(state["text"])
                    if name:
                        delta = {"role": "assistant", "name": name, **({"content": content} if content else {})}
                return {"id": rid, "object": "chat.completion.chunk", "created": created, "model": model,
                        "choices": [{"index": 0, "delta": delta, "finish_reason": _finish(result)}],
                        "usage": _usage(result.prompt_tokens, result.completion_tokens)}

            return await self._stream(prompt.text, params, chunk, final, adapter)
        self._admit(body.n)
        results = await asyncio.gather(*(self._run(prompt.text, params_for(i), adapter) for i in range(body.n)))
        choices = []
        for i, r in enumerate(results):
            name, content = message_of(r.text)
            message = {"role": "assistant", "content": content}
            if name:
                message["name"] = name
            choices.append({"index": i, "message": message, "finish_reason": _finish(r)})
        return {
            "id": rid, "object": "chat.completion", "created": created, "model": model, "choices": choices,
            "usage": _usage(sum(r.prompt_tokens for r in results), sum(r.completion_tokens for r in results)),
        }

    def _check_n(self, n: int) -> None:
        if n > self.limits.max_n:
            raise APIError(400, f"n={n} is over this server's limit of {self.limits.max_n}", param="n")


# --- building and running ----------------------------------------------------------------------------


def build_deployment(cfg: FizzbotConfig, model_dir: str | None = None, runtime_env: dict | None = None):
    """The bound Serve application for a config: replicas, autoscaling and resources from `serve.*`
    (`runtime_env`: the replica's Ray runtime environment, e.g. environment variables)."""
    from fizzbot.ray_utils import storage_runtime_env

    s = cfg.serve
    actor: dict[str, Any] = {"num_cpus": s.num_cpus, "num_gpus": s.num_gpus}
    # A replica that fetches a checkpoint from a bucket needs its credentials and endpoint, which a
    # Ray started before they were set would not hand it.
    runtime_env = dict(runtime_env or {})
    # Read by Serve when the replica's process starts, so it goes in the replica's own environment.
    own_loop = {"RAY_SERVE_RUN_USER_CODE_IN_SEPARATE_THREAD": "0"} if s.routes_on_replica_loop else {}
    env_vars = {**own_loop, **storage_runtime_env().get("env_vars", {}), **runtime_env.get("env_vars", {})}
    if env_vars:
        runtime_env["env_vars"] = env_vars
    if runtime_env:
        actor["runtime_env"] = runtime_env
    # The models (one checkpoint, or adapters) travel as Serve's user_config, not as constructor
    # arguments: changing them reconfigures the running replicas in place instead of replacing them.
    options_config = cfg.model_copy(update={"serve": s.model_copy(update={"adapters": {}, "model_dir": None})}).model_dump(mode="json")
    options: dict[str, Any] = {
        "ray_actor_options": actor,
        # Serve's own queue stays out of the way: the replica answers 503 itself, at once.
        "max_ongoing_requests": s.max_concurrent_requests + s.max_queued_requests + 16,
        # A replica that shuts down lets its requests finish (each ends within the request timeout).
        "graceful_shutdown_timeout_s": s.request_timeout_s + 5,
    }
    if s.autoscaling is not None:
        options["autoscaling_config"] = s.autoscaling.model_dump()
    else:
        options["num_replicas"] = s.num_replicas
    if s.adapters:
        options["user_config"] = {"adapters": resolve_adapters(cfg)}
    else:
        options["user_config"] = {"model_dir": model_dir or resolve_model_dir(cfg)}
    deployment = FizzbotServer.options(**options)
    # Serve gives a deployment run from Python a random code version, so every `serve.run` replaces
    # its replicas; a version that follows what a replica is built from instead lets a run that only
    # changes the user_config (the adapters) reconfigure the running replicas in place (as `serve
    # deploy` of a config file does). Ray 2.60 took `version` out of options(): the attribute remains.
    built_from = json.dumps([options_config, actor, options["max_ongoing_requests"]], sort_keys=True, default=str)
    deployment._version = hashlib.sha1(built_from.encode()).hexdigest()[:16]
    return deployment.bind(options_config)


class AppArgs(BaseModel):
    """Arguments of `serve run fizzbot.serve.app:build_app` (or a Serve config file's `args:`)."""

    model_config = ConfigDict(extra="forbid")
    config: str | None = None
    overrides: list[str] = Field(default_factory=list)


def build_app(args: AppArgs):
    """Application builder for Ray's `serve run`: the typed fizzbot config in, the application out."""
    cfg = load_config(args.config, args.overrides)
    return build_deployment(cfg)


def run_server(cfg: FizzbotConfig, *, name: str = "fizzbot", route_prefix: str = "/", runtime_env: dict | None = None) -> str:
    """Deploy the application on the running Ray (started if needed); returns its base URL.

    Serve's HTTP proxy takes `serve.host`/`serve.port` when Serve first starts on a cluster; later
    applications (another `name` and `route_prefix`) share that proxy.
    """
    from fizzbot.ray_utils import ensure_ray

    ensure_ray()
    serve.start(http_options={"host": cfg.serve.host, "port": cfg.serve.port}, controller_options=guard.CONTROLLER_OPTIONS)
    serve.run(build_deployment(cfg, runtime_env=runtime_env), name=name, route_prefix=route_prefix, blocking=False)
    # The proxy that answers is the one Serve started first on this cluster: its address, not the
    # config's, is where this application is (a second app with another serve.port shares it).
    from ray.serve.context import _get_global_client

    http = _get_global_client().http_config
    if int(http.port) != cfg.serve.port:
        logger.warning("Serve already listens on port %s on this cluster: serve.port=%s is not used", http.port, cfg.serve.port)
    host = "127.0.0.1" if http.host in ("0.0.0.0", "::") else http.host
    return f"http://{host}:{http.port}{route_prefix.rstrip('/')}"


def swap_model(app: str, model_dir: str, timeout_s: float = 600.0) -> dict:
    """Point the running Serve application `app` at another checkpoint (`fizzbot update`'s promotion).

    The application is deployed again from the settings it runs with (read from a replica), with only
    `serve.model_dir` changed: only its user_config differs, so Serve reconfigures the running replicas
    in place. Each loads the new checkpoint beside the old one and switches to it; requests in flight
    finish on the old one, and none is refused. Returns once every replica serves the new checkpoint.
    """
    from ray.serve.context import _get_global_client

    from fizzbot.ray_utils import ensure_ray

    ensure_ray()
    started = time.monotonic()
    details = _get_global_client().get_serve_details().get("applications", {})
    if app not in details:
        raise ValueError(f"update.serve_app={app}: no such Serve application on this Ray cluster (running: {', '.join(details) or 'none'})")
    handle = serve.get_app_handle(app)
    running = handle.settings.remote().result()
    cfg = FizzbotConfig.model_validate(running["config"])
    cfg = cfg.model_copy(update={"serve": cfg.serve.model_copy(update={"model_dir": str(model_dir), "adapters": {}})})
    serve.run(build_deployment(cfg), name=app, route_prefix=details[app].get("route_prefix") or "/", blocking=False)
    replicas = max(1, cfg.serve.num_replicas if cfg.serve.autoscaling is None else cfg.serve.autoscaling.max_replicas)
    while time.monotonic() - started < timeout_s:
        # Asked a few times per replica: every one that answers must serve the new checkpoint.
        served = {handle.settings.remote().result()["model_dir"] for _ in range(3 * replicas)}
        if served == {str(model_dir)}:
            return {"app": app, "model_dir": str(model_dir), "seconds": round(time.monotonic() - started, 1)}
        time.sleep(0.5)
    raise TimeoutError(f"Serve application {app} did not switch to {model_dir} within {timeout_s:.0f}s")
