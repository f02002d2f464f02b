"""The Ray Serve application: generation and decoding over HTTP, OpenAI-compatible routes included.

    fizzbot serve --config configs/serve.yaml [serve.model_dir=...]       (starts Ray and Serve)
    serve run configs/serve_app.yaml                                      (Ray's own CLI)

Routes: POST /v1/generate, /v1/decode, /v1/completions, /v1/chat/completions (`stream: true` as
server-sent events), GET /v1/models, /healthz. Each replica runs one GenerationEngine whose
continuous-batching loop lets concurrent requests share forward passes; admission control answers
503 at once when `max_concurrent_requests + max_queued_requests` are already in flight.

Message contexts are read by the checkpoint's own rules (fizzbot.chat.conversation.ChatRules: its
context budget and opted-out people, and `serve.unknown_speakers`): a name the model has never seen
takes the guest token, and the answer names it back where that is unambiguous.
"""

import asyncio
import json
import logging
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

from fizzbot.chat.conversation import Prompt
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
    context: list[ContextMessage] | str = Field(default_factory=list, description="Messages, or raw text with speaker tokens.")
    max_new_tokens: int | None = Field(None, ge=1)
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


class _OpenAIBody(_Body):
    """The sampling fields the OpenAI completions and chat routes share."""

    model: str | None = None
    max_tokens: int | None = Field(None, ge=1)
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
    if cfg.serve.model_dir:
        path = Path(cfg.serve.model_dir)
        if not path.is_dir():
            raise FileNotFoundError(f"serve.model_dir={cfg.serve.model_dir}: no such folder")
        from fizzbot.artifacts.checkpoint import check_loadable

        check_loadable(path)  # refused here, before a replica would fail on it over and over
        return str(path.resolve())
    from fizzbot.artifacts.checkpoint import find_latest

    return str(find_latest(cfg.run.dir).resolve())


@serve.deployment(name="fizzbot", health_check_period_s=10, health_check_timeout_s=30)
@serve.ingress(api)
class FizzbotServer:
    """One replica: a loaded checkpoint, its generation engine, and the HTTP routes."""

    def __init__(self, config: dict, model_dir: str):
        from fizzbot.artifacts.loading import chat_rules
        from fizzbot.infer.engine import engine_from_checkpoint

        self.cfg = FizzbotConfig.model_validate(config)
        self.limits: ServeConfig = self.cfg.serve
        guard.configure(self.limits)
        g = self.cfg.generate
        self.model_dir = model_dir
        self.engine = engine_from_checkpoint(
            model_dir,
            device=g.device,
            tokenizer_model=g.tokenizer_model,
            max_prompt_tokens=self.limits.max_prompt_tokens,
            max_batch_size=self.limits.max_concurrent_requests,
            static_cache=g.compile,
            compile=g.compile,
            max_cache_len=g.max_cache_len,
        )
        self.rules = chat_rules(model_dir, self.limits.unknown_speakers)
        self.engine.start()
        self.in_flight = 0
        self.created = int(time.time())
        logger.info("fizzbot replica ready: %s", model_dir)

    async def check_health(self) -> None:
        thread = self.engine._thread
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
        if self.in_flight + count > capacity:
            raise APIError(503, f"server busy: {self.in_flight} requests in flight (limit {capacity}); retry later", "overloaded_error")

    def _speakers(self, speaker: str | None, forbid=()) -> tuple[str | None, str | None, tuple[str, ...]]:
        """(token to force, the forced speaker's name where it takes the guest token, tokens to forbid)."""
        from fizzbot.chat.conversation import speaker_to_force, tokens_to_forbid

        smap = self.engine.speaker_map
        try:
            force, forced_guest = speaker_to_force(speaker, smap, self.rules) if speaker else (None, None)
        except KeyError as exc:
            raise APIError(400, str(exc.args[0]), param="speaker") from None
        try:
            return force, forced_guest, tokens_to_forbid(forbid, smap, self.rules)
        except KeyError as exc:
            raise APIError(400, str(exc.args[0]), param="forbid_speakers") from None

    def _sampling(self, *, max_new_tokens, temperature, top_p, repetition_penalty, turns, seed, eos_stop=True, force=None, forbidden=(), stop=(), top_k=None):
        from fizzbot.infer.engine import SamplingParams

        g, lim = self.cfg.generate, self.limits
        if max_new_tokens is not None and max_new_tokens > lim.max_new_tokens:
            raise APIError(400, f"max_new_tokens {max_new_tokens} is over this server's limit of {lim.max_new_tokens}", param="max_new_tokens")
        if turns is not None and turns > lim.max_turns:
            raise APIError(400, f"turns {turns} is over this server's limit of {lim.max_turns}", param="turns")
        return SamplingParams(
            max_new_tokens=max_new_tokens or g.max_new_tokens,
            temperature=g.temperature if temperature is None else temperature,
            top_p=g.top_p if top_p is None else top_p,
            top_k=g.top_k if top_k is None else top_k,
            repetition_penalty=g.repetition_penalty if repetition_penalty is None else repetition_penalty,
            turns=turns or 1,
            eos_stop=eos_stop,
            seed=seed,
            force_speaker=force,
            forbid_speakers=forbidden,
            stop=tuple(stop),
        )

    def _prompt_from_messages(self, messages: list[dict]) -> Prompt:
        """The checkpoint's rules: its message and character budget (what it was trained on), opted-out
        people, unknown speakers under `serve.unknown_speakers`."""
        from fizzbot.chat.conversation import encode_conversation

        try:
            return encode_conversation(messages, self.engine.speaker_map, self.rules)
        except KeyError as exc:
            raise APIError(400, str(exc.args[0]), param="messages") from None

    async def _run(self, prompt: str, params, on_text=None):
        """Submit to the engine and await the result; cancels the request if the client goes away."""
        from fizzbot.infer.engine import Request as EngineRequest

        loop = asyncio.get_running_loop()
        future: asyncio.Future = loop.create_future()

        def done(outcome) -> None:
            loop.call_soon_threadsafe(lambda: future.done() or future.set_result(outcome))

        request = EngineRequest(prompt, params, on_text=on_text, on_done=done)
        self.in_flight += 1
        try:
            self.engine.submit(request)
            outcome = await future
        except asyncio.CancelledError:
            request.cancelled = True
            raise
        finally:
            self.in_flight -= 1
        if isinstance(outcome, BaseException):
            if isinstance(outcome, ValueError):
                raise APIError(400, str(outcome))
            raise outcome
        if self.limits.log_content:
            logger.info("generated %r", outcome.text)
        else:
            logger.info("generated %d tokens in %.2fs (prompt %d tokens)", outcome.completion_tokens, outcome.seconds, outcome.prompt_tokens)
        return outcome

    def _check_prompt_length(self, prompt: str) -> None:
        n = len(self.engine.tokenizer(prompt, add_special_tokens=False)["input_ids"])
        if n > self.limits.max_prompt_tokens:
            raise APIError(400, f"prompt is {n} tokens, over this server's limit of {self.limits.max_prompt_tokens}", param="prompt")

    def _stream(self, prompt: str, params, make_chunk, finish_chunk) -> StreamingResponse:
        """Server-sent events: one chunk per text delta, a final chunk, then [DONE]."""
        loop = asyncio.get_running_loop()
        deltas: asyncio.Queue = asyncio.Queue()

        def on_text(delta: str) -> None:
            loop.call_soon_threadsafe(deltas.put_nowait, delta)

        async def events():
            task = asyncio.ensure_future(self._run(prompt, params, on_text=on_text))
            try:
                while True:
                    getter = asyncio.ensure_future(deltas.get())
                    finished, _ = await asyncio.wait({getter, task}, return_when=asyncio.FIRST_COMPLETED)
                    if getter in finished:
                        chunk = make_chunk(getter.result())
                        if chunk is not None:
                            yield f"data: {json.dumps(chunk)}\n\n"
                        continue
                    getter.cancel()
                    while not deltas.empty():
                        chunk = make_chunk(deltas.get_nowait())
                        if chunk is not None:
                            yield f"data: {json.dumps(chunk)}\n\n"
                    try:
                        result = task.result()
                    except APIError as exc:
                        yield f"data: {json.dumps({'error': {'message': exc.message, 'type': exc.type, 'param': exc.param}})}\n\n"
                        break
                    yield f"data: {json.dumps(finish_chunk(result))}\n\n"
                    break
                yield "data: [DONE]\n\n"
            finally:
                if not task.done():
                    task.cancel()

        return StreamingResponse(events(), media_type="text/event-stream", headers={"Cache-Control": "no-cache"})

    # --- routes ------------------------------------------------------------------------------------
    @api.get("/healthz")
    async def healthz(self) -> dict:
        await self.check_health()
        return {"status": "ok", "model": self.limits.model_name, "in_flight": self.in_flight}

    @api.get("/v1/models")
    async def models(self, request: Request) -> dict:
        self._authorize(request)
        return {
            "object": "list",
            "data": [{"id": self.limits.model_name, "object": "model", "created": self.created, "owned_by": "fizzbot", "root": self.model_dir}],
        }

    @api.post("/v1/decode")
    async def decode(self, body: DecodeBody, request: Request) -> dict:
        from fizzbot.chat.conversation import decode, format_lines

        self._authorize(request)
        messages = decode(body.text, self.engine.speaker_map)
        return {"messages": [m.to_json() for m in messages], "text": format_lines(messages)}

    @api.post("/v1/generate")
    async def generate(self, body: GenerateBody, request: Request) -> dict:
        from fizzbot.chat.conversation import decode

        self._authorize(request)
        if isinstance(body.context, str):
            prompt = Prompt(body.context)
        else:
            prompt = self._prompt_from_messages([m.model_dump() for m in body.context])
        force, forced_guest, forbidden = self._speakers(body.speaker, body.forbid_speakers)
        params = self._sampling(
            max_new_tokens=body.max_new_tokens, temperature=body.temperature, top_p=body.top_p, top_k=body.top_k,
            repetition_penalty=body.repetition_penalty, turns=body.turns or self.cfg.generate.turns, seed=body.seed,
            eos_stop=body.eos_stop, force=force, forbidden=forbidden,
        )
        self._admit(1)
        result = await self._run(prompt.text, params)
        smap = self.engine.speaker_map
        messages = decode(result.text, smap, prompt.speaker_names(smap, forced_guest), forced_guest)
        return {
            "raw": result.text,
            "messages": [m.to_json() for m in messages],
            "finish_reason": result.finish_reason,
            # Left out by the checkpoint's message/character budget, then by the token budget.
            "dropped_messages": prompt.dropped + result.dropped_messages,
            "usage": _usage(result.prompt_tokens, result.completion_tokens),
        }

    @api.post("/v1/completions")
    async def completions(self, body: CompletionBody, request: Request):
        self._authorize(request)
        prompts = [body.prompt] if isinstance(body.prompt, str) else list(body.prompt)
        if not prompts:
            raise APIError(400, "prompt is empty", param="prompt")
        self._check_n(body.n)
        if body.stream and (len(prompts) > 1 or body.n > 1):
            raise APIError(400, "stream=true takes one prompt and n=1", param="stream")
        for p in prompts:
            self._check_prompt_length(p)
        created, rid = int(time.time()), f"cmpl-{uuid.uuid4().hex[:24]}"
        model = body.model or self.limits.model_name

        def params_for(i: int):
            seed = None if body.seed is None else body.seed + i
            return self._sampling(max_new_tokens=body.max_tokens, temperature=body.temperature, top_p=body.top_p,
                                  repetition_penalty=body.repetition_penalty, turns=body.turns, seed=seed, stop=body.stops)

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

            return self._stream(prompts[0], params, chunk, final)
        jobs = [(p, params_for(i)) for p in prompts for i in range(body.n)]
        self._admit(len(jobs))
        results = await asyncio.gather(*(self._run(p, params) for p, params in jobs))
        return {
            "id": rid, "object": "text_completion", "created": created, "model": model,
            "choices": [{"text": r.text, "index": i, "logprobs": None, "finish_reason": _finish(r)} for i, r in enumerate(results)],
            "usage": _usage(sum(r.prompt_tokens for r in results), sum(r.completion_tokens for r in results)),
        }

    @api.post("/v1/chat/completions")
    async def chat_completions(self, body: ChatBody, request: Request):
        from fizzbot.chat.conversation import decode

        self._authorize(request)
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
        prompt = self._prompt_from_messages(context)
        force, forced_guest, _ = self._speakers(body.speaker)
        max_tokens = body.max_completion_tokens or body.max_tokens
        created, rid = int(time.time()), f"chatcmpl-{uuid.uuid4().hex[:24]}"
        model = body.model or self.limits.model_name
        smap = self.engine.speaker_map
        names = prompt.speaker_names(smap, forced_guest)

        def params_for(i: int):
            seed = None if body.seed is None else body.seed + i
            return self._sampling(max_new_tokens=max_tokens, temperature=body.temperature, top_p=body.top_p,
                                  repetition_penalty=body.repetition_penalty, turns=1, seed=seed, force=force, stop=body.stops)

        def message_of(text: str) -> tuple[str | None, str]:
            decoded = decode(text, smap, names, forced_guest)
            if not decoded:
                return None, text.strip()
            return decoded[0].username, decoded[0].content

        if body.stream:
            params = params_for(0)
            self._admit(1)
            state = {"text": "", "sent": "", "named": False}

            def chunk(delta: str) -> dict | None:
                state["text"] += delta
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
                return {"id": rid, "object": "chat.completion.chunk", "created": created, "model": model,
                        "choices": [{"index": 0, "delta": {}, "finish_reason": _finish(result)}],
                        "usage": _usage(result.prompt_tokens, result.completion_tokens)}

            return self._stream(prompt.text, params, chunk, final)
        self._admit(body.n)
        results = await asyncio.gather(*(self._run(prompt.text, params_for(i)) for i in range(body.n)))
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


def build_deployment(cfg: FizzbotConfig, model_dir: str | None = None):
    """The bound Serve application for a config: replicas, autoscaling and resources from `serve.*`."""
    s = cfg.serve
    options: dict[str, Any] = {
        "ray_actor_options": {"num_cpus": s.num_cpus, "num_gpus": s.num_gpus},
        # Serve's own queue stays out of the way: the replica answers 503 itself, at once.
        "max_ongoing_requests": s.max_concurrent_requests + s.max_queued_requests + 16,
    }
    if s.autoscaling is not None:
        options["autoscaling_config"] = s.autoscaling.model_dump()
    else:
        options["num_replicas"] = s.num_replicas
    return FizzbotServer.options(**options).bind(cfg.model_dump(mode="json"), model_dir or resolve_model_dir(cfg))


class AppArgs(BaseModel):
    """Arguments of `serve run fizzbot.serve.app:build_app` (or a Serve config file's `args:`)."""

    model_config = ConfigDict(extra="forbid")
    config: str | None = None
    overrides: list[str] = Field(default_factory=list)


def build_app(args: AppArgs):
    """Application builder for Ray's `serve run`: the typed fizzbot config in, the application out."""
    cfg = load_config(args.config, args.overrides)
    return build_deployment(cfg)


def run_server(cfg: FizzbotConfig, *, name: str = "fizzbot", route_prefix: str = "/") -> str:
    """Deploy the application on the running Ray (started if needed); returns its base URL.

    Serve's HTTP proxy takes `serve.host`/`serve.port` when Serve first starts on a cluster; later
    applications (another `name` and `route_prefix`) share that proxy.
    """
    from fizzbot.ray_utils import ensure_ray

    ensure_ray()
    serve.start(http_options={"host": cfg.serve.host, "port": cfg.serve.port}, controller_options=guard.CONTROLLER_OPTIONS)
    serve.run(build_deployment(cfg), name=name, route_prefix=route_prefix, blocking=False)
    host = "127.0.0.1" if cfg.serve.host in ("0.0.0.0", "::") else cfg.serve.host
    return f"http://{host}:{cfg.serve.port}{route_prefix.rstrip('/')}"
