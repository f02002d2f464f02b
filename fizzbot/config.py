"""One typed configuration for every stage: YAML files, `key.sub=value` overrides, clear errors.

Every field is documented once, here. `fizzbot <command> --config FILE key.sub=value ...` loads the
file, applies the overrides in order, and validates the result; an unknown key or a bad value is
refused with a message that names the key.
"""

from __future__ import annotations

import copy
import difflib
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator


class ConfigError(ValueError):
    """A configuration problem, phrased for the person who wrote the config."""


class Section(BaseModel):
    # extra="forbid": a misspelt key is an error, not a silently ignored setting.
    model_config = ConfigDict(extra="forbid", validate_assignment=True, protected_namespaces=())


FormatName = Literal["auto", "seed", "discord", "discord_csv", "slack", "telegram", "irc", "whatsapp", "matrix"]


class AttachmentPlaceholders(Section):
    """What a message that is only an attachment becomes (`data.keep_attachments`), by kind."""

    image: str = "[image]"
    gif: str = "[gif]"
    video: str = "[video]"
    audio: str = Field("[audio]", description="Audio files and voice messages.")
    sticker: str = "[sticker]"
    file: str = Field("[file]", description="Documents and files of any other kind.")
    media: str = Field("[media]", description="Media of no stated kind (WhatsApp's `<Media omitted>`).")
    poll: str = "[poll]"
    location: str = "[location]"
    contact: str = "[contact]"
    forwarded: str = Field("[forwarded]", description="A forwarded message (Telegram): someone else's words.")

    @model_validator(mode="after")
    def _check_not_blank(self) -> "AttachmentPlaceholders":
        for name, text in self.model_dump().items():
            if not text.strip():
                raise ValueError(
                    f"data.attachment_placeholders.{name} is blank; give it a text, or drop attachment-only "
                    "messages with data.keep_attachments=false"
                )
        return self


class DataConfig(Section):
    """Reading chat exports (`fizzbot prepare`) and the prepared data that training reads."""

    inputs: list[str] = Field(default_factory=list, description="Chat exports to prepare: files, folders or Slack zips.")
    format: FormatName = Field("auto", description="Export format of `inputs`; `auto` detects it per file.")
    output: str = Field("data/prepared", description="Folder `fizzbot prepare` writes.")
    path: str = Field(
        "data/prepared",
        description="Training data: a prepared folder, or one JSONL of {context, target} rows "
        "(the original tool's training_examples.jsonl, with speaker_map.json beside it); a local path or a "
        "URI pyarrow knows (s3://, gs://).",
    )
    val_split: float = Field(0.05, ge=0.0, lt=1.0, description="Fraction held out for validation.")
    val_split_by: Literal["time", "channel"] = Field(
        "time",
        description="`time`: the latest messages of each channel (a single JSONL: its latest rows per channel, "
        "by `ts`, else by line order); `channel`: whole channels.",
    )
    val_jsonl: str | None = Field(None, description="A JSONL of validation rows; replaces val_split when set.")
    openers: bool = Field(
        True,
        description="The first message of each conversation is a target too, with an empty context, so the "
        "model learns who starts a conversation and how; false: it is context only.",
    )
    min_context_messages: int = Field(
        1, ge=0, description="Fewest messages in a context window (conversation openers aside)."
    )
    max_context_messages: int = Field(12, ge=1, description="Most messages in a context window.")
    name_others: bool = Field(
        True,
        description="A message under the shared others token carries its author's name (`<S63> name: text`), "
        "so the model can tell the long tail apart, answer whoever spoke, and name who speaks next; false: "
        "the long tail is one faceless speaker, as in the original tool. Unset with data.speaker_map: that map's.",
    )
    max_context_chars: int = Field(2000, ge=16, description="Context budget in characters; oldest messages go first.")
    max_message_chars: int = Field(2000, ge=16, description="Longer messages are cut to this many characters.")
    conversation_gap_minutes: float = Field(
        60.0, gt=0, description="A silence this long ends a conversation: no context reaches across it."
    )
    max_speakers: int = Field(
        64,
        ge=2,
        description="Speaker tokens, the shared others token included: the most active users get <S0>.. ; "
        "everyone else (and, when serving, anyone new: the guest) shares the others token after them.",
    )
    speaker_map: str | None = Field(
        None,
        description="An earlier speaker_map.json (or a prepared or checkpoint folder holding one): every author "
        "it names keeps their token, new authors are appended after its tokens while max_speakers allows.",
    )
    exclude_speakers: list[str] = Field(
        default_factory=list,
        description="People who opted out (usernames, any case, or author ids): never targets, never a speaker "
        "token, never generated as.",
    )
    exclude_mode: Literal["anonymize", "drop"] = Field(
        "anonymize",
        description="Messages of exclude_speakers: `anonymize` keeps them as context under the others token; "
        "`drop` leaves them out.",
    )
    drop_bots: bool = Field(True, description="Drop messages by bots (flagged by the export, or named below).")
    bot_usernames: list[str] = Field(default_factory=list, description="More usernames to treat as bots.")
    flood_min_authors: int = Field(3, ge=2, description="One text from this many authors in flood_window_seconds is a flood.")
    flood_window_seconds: float = Field(120.0, gt=0, description="Time window of the flood filter.")
    flood_min_chars: int = Field(10, ge=1, description="Shorter texts (\"lol\", \"thanks\") never count as floods.")
    scrub_pii: bool = Field(False, description="Replace e-mail addresses, phone numbers and IP addresses.")
    irc_channel: str | None = Field(None, description="Channel name for every IRC log (default: the channel each log names).")
    timezone: str | None = Field(
        None,
        description="IANA time zone (`Europe/Berlin`) of timestamps written without an offset: IRC and WhatsApp "
        "logs in local time, Telegram's `date`, old DiscordChatExporter CSVs, seed ISO times. Unset: UTC.",
    )
    keep_attachments: bool = Field(
        True,
        description="Keep messages that are only an attachment, sticker or forward as a placeholder "
        "(data.attachment_placeholders), so that who answered whom survives; false drops them (counted).",
    )
    attachment_placeholders: AttachmentPlaceholders = Field(default_factory=AttachmentPlaceholders)
    on_error: Literal["fail", "skip_messages", "skip"] = Field(
        "skip_messages",
        description="`skip_messages`: a message that cannot be read (unknown subtype or shape, missing field, "
        "bad line) is skipped, counted per reason and sampled in stats.json, but a file that is not its "
        "format at all stops the run with a one-line error; `fail`: any bad message or file stops the run "
        "before anything is written; `skip`: bad files are skipped and counted too.",
    )
    seed: int = Field(0, description="Seed of the randomised context windows.")
    shard_messages: int = Field(
        10000, ge=100, description="Messages per unit of parallel windowing work (whole segments)."
    )

    @model_validator(mode="after")
    def _check_timezone(self) -> "DataConfig":
        if self.timezone is not None:
            import zoneinfo

            try:
                zoneinfo.ZoneInfo(self.timezone)
            except (zoneinfo.ZoneInfoNotFoundError, ValueError):
                raise ValueError(
                    f"data.timezone: unknown time zone {self.timezone!r}; give an IANA name such as "
                    "Europe/Berlin or America/New_York (or leave it unset for UTC)"
                ) from None
        return self

    @model_validator(mode="after")
    def _check_context_bounds(self) -> "DataConfig":
        if self.min_context_messages > self.max_context_messages:
            raise ValueError(
                f"data.min_context_messages ({self.min_context_messages}) is larger than "
                f"data.max_context_messages ({self.max_context_messages}); lower the first or raise the second"
            )
        return self


class TinyModelConfig(Section):
    """The built-in model: a small Llama-shaped network with a BPE tokenizer trained on the corpus."""

    vocab_size: int = Field(4096, ge=300, description="BPE vocabulary (before the speaker tokens).")
    hidden_size: int = Field(256, ge=16)
    num_layers: int = Field(4, ge=1)
    num_heads: int = Field(4, ge=1)
    num_kv_heads: int = Field(4, ge=1)
    intermediate_size: int = Field(768, ge=16)
    max_position_embeddings: int = Field(1024, ge=64)
    tie_word_embeddings: bool = True

    @model_validator(mode="after")
    def _check_heads(self) -> "TinyModelConfig":
        if self.hidden_size % self.num_heads:
            raise ValueError(
                f"model.tiny.hidden_size ({self.hidden_size}) must be a multiple of model.tiny.num_heads ({self.num_heads})"
            )
        if self.num_heads % self.num_kv_heads:
            raise ValueError(
                f"model.tiny.num_heads ({self.num_heads}) must be a multiple of model.tiny.num_kv_heads ({self.num_kv_heads})"
            )
        return self


class ModelConfig(Section):
    base: str = Field(
        "tiny", description="`tiny` (the built-in model), a Hugging Face hub id, or a local model folder."
    )
    method: Literal["full", "lora", "qlora"] = Field("lora", description="Full fine-tuning, LoRA, or QLoRA (4-bit nf4).")
    tokenizer: str | None = Field(None, description="Tokenizer to use instead of the base model's own.")
    dtype: Literal["auto", "float32", "bfloat16", "float16"] = Field(
        "auto", description="Weights and compute dtype; `auto` is bfloat16 on GPU and float32 on CPU."
    )
    lora_r: int = Field(16, ge=1)
    lora_alpha: int = Field(32, ge=1)
    lora_dropout: float = Field(0.0, ge=0.0, lt=1.0)
    lora_target_modules: list[str] | Literal["all-linear"] = Field(
        "all-linear", description="Modules that get adapters; `all-linear` is every linear layer but the output head."
    )
    bnb_4bit_quant_type: Literal["nf4", "fp4"] = "nf4"
    bnb_4bit_double_quant: bool = True
    gradient_checkpointing: bool = Field(False, description="Recompute activations in the backward pass to save memory.")
    vocab_multiple: int | Literal["auto"] = Field(
        "auto",
        description="When the chat tokens outgrow the embedding matrix, pad its rows to a multiple of this (tensor "
        "cores like aligned shapes; the checkpoint records the size, and inference builds exactly it); "
        "`auto`: 64 on GPU, 1 on CPU.",
    )
    attn_implementation: Literal["sdpa", "eager", "flash_attention_2", "flex_attention"] = Field(
        "sdpa",
        description="Attention kernel. With training.packing, `flex_attention` (GPU) skips the blocks between "
        "packed rows; `sdpa` masks them (correct everywhere, dense work).",
    )
    trust_remote_code: bool = False
    tiny: TinyModelConfig = Field(default_factory=TinyModelConfig)

    @field_validator("vocab_multiple")
    @classmethod
    def _positive_multiple(cls, value):
        if value != "auto" and value < 1:
            raise ValueError("must be `auto` or a positive number of rows (1: no padding)")
        return value


class TrainingConfig(Section):
    num_workers: int = Field(2, ge=1, description="Ray Train workers (one per GPU on GPU).")
    use_gpu: bool = Field(False, description="One GPU per worker, NCCL between them.")
    cpus_per_worker: float = Field(1.0, gt=0)
    wait_for_gpus: bool = Field(
        False, description="On an autoscaling cluster, let Ray bring GPU workers up instead of refusing a GPU config."
    )
    threads_per_worker: int | None = Field(None, ge=1, description="torch threads per CPU worker; default cores/workers.")
    max_steps: int = Field(200, ge=1, description="Optimizer steps.")
    max_minutes: float | None = Field(
        None, gt=0, description="Wall-clock budget of this command's training loop: the first step past it is the "
        "last (evaluated, saved, the run complete), even before max_steps. The learning-rate schedule still "
        "follows max_steps: set that to about the steps that fit.",
    )
    batch_size: int = Field(8, ge=1, description="Rows per micro-batch on each worker.")
    max_tokens_per_batch: int | None = Field(
        None, ge=64, description="Cap on (rows x padded length) per micro-batch; long rows make smaller batches."
    )
    grad_accum_steps: int = Field(1, ge=1, description="Micro-batches per optimizer step.")
    learning_rate: float = Field(2e-4, gt=0)
    embedding_learning_rate: float | None = Field(
        None, gt=0, description="Learning rate of the trained token rows (speaker tokens); default learning_rate."
    )
    weight_decay: float = Field(0.0, ge=0)
    warmup_steps: int = Field(10, ge=0)
    lr_schedule: Literal["cosine", "linear", "constant"] = "cosine"
    max_grad_norm: float = Field(1.0, gt=0)
    max_seq_len: int = Field(512, ge=16, description="Longer rows lose their oldest context messages.")
    batching: Literal["bucket", "pad"] = Field(
        "bucket", description="`bucket`: rows of similar length batch together; `pad`: rows in data order."
    )
    bucket_size_multiplier: int = Field(16, ge=1, description="Rows sorted by length within pools of batch x this.")
    eval_steps: int = Field(50, ge=1)
    eval_max_batches: int | None = Field(
        None, ge=1,
        description="Evaluate a fixed, seeded sample of validation rows spanning all lengths, as many as fill this "
        "many batches per worker (batch_size rows and max_tokens_per_batch tokens each); unset: every row.",
    )
    save_steps: int = Field(100, ge=1)
    log_steps: int = Field(10, ge=1)
    keep_checkpoints: int = Field(2, ge=1, description="Best checkpoints kept, by validation loss.")
    max_failures: int = Field(2, ge=0, description="Worker-group restarts from the last checkpoint.")
    seed: int = 0
    deepspeed: bool = Field(False, description="DeepSpeed ZeRO (GPU only).")
    zero_stage: Literal[1, 2, 3] = Field(2, description="ZeRO stage 1 (optimizer state) or 2 (and gradients); 3 is refused.")
    compile: bool = Field(False, description="torch.compile the model (GPU).")
    chunked_loss: bool = Field(
        True, description="Compute the loss only at target positions, never materialising full-vocabulary logits."
    )
    fused_kernels: bool = Field(
        False,
        description="Liger-Kernel's fused RMSNorm, RoPE, SwiGLU and linear + cross-entropy over the target positions "
        "(GPU, `pip install fizzbot[gpu]`); without a GPU or Liger the plain path runs, with one log line.",
    )
    train_on_context: bool = Field(
        False,
        description="Put the loss on every message of a training row, its context as well as its target (Axolotl's "
        "train_on_inputs): each window then teaches every message in it, with the messages before it as context, for "
        "the same forward pass. Validation, the saved best checkpoint and `fizzbot eval` still score targets only.",
    )
    packing: bool = Field(
        False,
        description="Pack whole rows into sequences of pack_length tokens (attention kept within each row) and "
        "micro-batches of max_tokens_per_batch tokens, instead of padded length buckets.",
    )
    pack_length: int = Field(
        4096, ge=64, description="Tokens per packed sequence (with training.packing); at least max_seq_len."
    )

    @model_validator(mode="after")
    def _check(self) -> "TrainingConfig":
        if self.deepspeed and not self.use_gpu:
            raise ValueError(
                "training.deepspeed needs training.use_gpu=true; DeepSpeed ZeRO runs on GPUs only "
                "(set training.deepspeed=false to train on CPU)"
            )
        if self.deepspeed and self.zero_stage == 3:
            # Under ZeRO-3 every rank holds a shard of each weight: rank 0's save_pretrained would write
            # partitioned (empty) tensors. Gathering them is not tested, so the stage is refused.
            raise ValueError(
                "training.zero_stage=3 is not supported: checkpoints would hold rank 0's partitions of the "
                "weights, not the weights; use training.zero_stage=2 (optimizer state and gradients sharded)"
            )
        if self.packing:
            if self.max_tokens_per_batch is None:
                raise ValueError(
                    "training.packing needs training.max_tokens_per_batch (the tokens of one micro-batch of packed "
                    "sequences); set it, e.g. training.max_tokens_per_batch=16384"
                )
            if self.pack_length < self.max_seq_len:
                raise ValueError(
                    f"training.pack_length ({self.pack_length}) is shorter than training.max_seq_len "
                    f"({self.max_seq_len}): a row must fit in one packed sequence; raise pack_length"
                )
            if self.pack_length > self.max_tokens_per_batch:
                raise ValueError(
                    f"training.pack_length ({self.pack_length}) is larger than training.max_tokens_per_batch "
                    f"({self.max_tokens_per_batch}); lower pack_length or raise max_tokens_per_batch"
                )
        return self


ResumeMode = Literal["auto", "force", "never"]


class RunConfig(Section):
    name: str = Field("fizzbot", pattern=r"^[A-Za-z0-9_.-]+$", description="Runs go to <run.dir>/<run.name>/<timestamp>/.")
    dir: str = Field("runs", description="Where runs live: a local path or a URI pyarrow knows (s3://, gs://).")
    resume: ResumeMode = Field(
        "auto",
        description="`auto`: resume the newest unfinished run of this name when its training settings and data "
        "match, else start a new run (saying why); `force`: resume it whatever changed (new settings apply, the "
        "data position restarts if the data changed); `never`: always a new run.",
    )

    @field_validator("resume", mode="before")
    @classmethod
    def _resume_from_bool(cls, value):
        # Configs written before the three modes said `resume: true/false`.
        if isinstance(value, bool):
            return "auto" if value else "never"
        return value


class GenerateConfig(Section):
    """Inference defaults (the original tool's run_config.yaml)."""

    max_new_tokens: int = Field(64, ge=1)
    temperature: float = Field(0.8, ge=0.0, description="0 is greedy decoding.")
    top_p: float = Field(0.95, gt=0.0, le=1.0)
    top_k: int = Field(0, ge=0, description="0 turns top-k off.")
    repetition_penalty: float = Field(1.1, gt=0.0)
    turns: int = Field(1, ge=1)
    eos_stop: bool = Field(True, description="Stop at the model's end-of-sequence token as well as <EOT>.")
    seed: int | None = None
    max_prompt_tokens: int = Field(768, ge=8, description="Longer contexts lose their oldest messages.")
    tokenizer_model: str | None = Field(None, description="Tokenizer for a checkpoint saved without one.")
    forbid_speakers: list[str] = Field(default_factory=list, description="Usernames or tokens never to speak as.")
    unknown_speakers: Literal["guest", "reject"] = Field(
        "guest",
        description="A name the speaker map does not know (context, --speaker, --next-speaker): `guest` gives it "
        "the shared others token, `reject` stops with the known names.",
    )
    device: Literal["auto", "cpu", "cuda"] = "auto"
    max_batch_size: int = Field(32, ge=1, description="Requests decoded together in one forward pass.")
    compile: bool = Field(
        False, description="Capture the decode step (forward, sampling, grammar) as CUDA graphs, one per batch size (GPU)."
    )
    max_cache_len: int = Field(
        2048, ge=64,
        description="Most tokens one conversation (prompt + generated) may hold; a row reaching it ends with `length`. "
        "The server raises it to what its limits allow (serve.max_prompt_tokens + serve.max_turns x serve.max_new_tokens).",
    )
    kv_cache_tokens: int | None = Field(
        None, ge=64,
        description="Tokens the paged KV cache holds, shared by all rows; default max_batch_size x max_cache_len "
        "(every row's worst case; memory is only touched as it is used).",
    )
    prefill_chunk_tokens: int | None = Field(
        None, ge=16, description="Prompt tokens prefilled per engine step (long prompts take several); default 2048 on GPU, 512 on CPU."
    )


class EvalConfig(Section):
    """`fizzbot eval`: how many validation rows it scores and how much it generates (with `generate`'s sampling)."""

    max_rows: int | None = Field(
        2000, ge=1, description="Validation rows whose losses and next speaker are scored (a seeded sample); null scores all."
    )
    batch_size: int = Field(16, ge=1, description="Rows per scoring batch (sorted by length).")
    style_speakers: int = Field(
        12, ge=0, description="Named speakers (the most active first) whose style is measured; 0 skips the style measure."
    )
    style_min_messages: int = Field(50, ge=1, description="Fewest training messages a speaker needs for the style measure.")
    style_messages: int = Field(
        24, ge=1, description="Validation messages per style speaker: each real one, and one generated as that speaker from the same context."
    )
    style_train_messages: int = Field(
        2000, ge=10, description="Training messages per speaker that the style classifier learns from (a seeded sample)."
    )
    conversations: int = Field(4, ge=0, description="Validation contexts shown with their real and generated continuations.")
    conversation_turns: int = Field(4, ge=1, description="Messages in each of those continuations.")
    seed: int = Field(0, description="Seed of the samples and of generation.")


class UpdateConfig(Section):
    """`fizzbot update`: continuing a trained model on a channel's new messages."""

    max_steps: int = Field(100, ge=1, description="Optimizer steps of the update run (a short schedule from the checkpoint's weights).")
    warmup_steps: int = Field(5, ge=0)
    learning_rate: float | None = Field(None, gt=0, description="Learning rate of the update run; unset: the checkpoint's training.learning_rate.")
    replay_share: float = Field(
        0.5, ge=0.0, description="Old training rows mixed in, as a share of the new training rows (so that the model does not forget)."
    )
    tolerance: float = Field(
        0.02, ge=0.0, description="Promote only if the new model's loss on the old validation rows is at most this much (relative) worse."
    )
    eval_rows: int = Field(2000, ge=1, description="Validation rows scored per side (a seeded sample) to decide the promotion.")
    seed: int = Field(0, description="Seed of the replay sample and the evaluation sample.")
    old_data: str | None = Field(
        None, description="The prepared folder the checkpoint was trained on; unset: the data.path its config names."
    )
    workdir: str | None = Field(None, description="Where the update's prepared data goes; unset: <run.dir>/updates/<timestamp>/.")
    serve_app: str | None = Field(
        None, description="A running Serve application to point at the new checkpoint when it is promoted (unset: serving is not touched)."
    )


class AutoscalingConfig(Section):
    min_replicas: int = Field(1, ge=0)
    max_replicas: int = Field(1, ge=1)
    target_ongoing_requests: float = Field(16, gt=0)


class ServeConfig(Section):
    model_dir: str | None = Field(
        None,
        description="Checkpoint to serve: a folder or a URI (s3://..., fetched by each replica into a local cache "
        "and checked against its manifest); unset means the newest run's best under run.dir.",
    )
    adapters: dict[str, str] = Field(
        default_factory=dict,
        description="Several LoRA checkpoints of one base, served unmerged side by side: {name: checkpoint}. A request's "
        "`model` picks one (the first answers to serve.model_name and to requests without a model); serve.model_dir is unused. "
        "Changing this on a running app (`serve deploy`, or `fizzbot serve` again) loads new adapters without a restart.",
    )
    max_adapters: int = Field(16, ge=1, description="Adapter slots per replica (adapters added later need a free one).")
    max_lora_rank: int | None = Field(None, ge=1, description="Largest LoRA rank an adapter may have; default the largest at start.")
    host: str = "127.0.0.1"
    port: int = Field(8000, ge=1, le=65535)
    api_key: str | None = Field(None, description="When set, every route but /healthz needs `Authorization: Bearer <key>`.")
    model_name: str = Field("fizzbot", description="Model id shown by /v1/models.")
    num_replicas: int = Field(1, ge=1)
    autoscaling: AutoscalingConfig | None = None
    num_cpus: float = Field(1.0, gt=0)
    num_gpus: float = Field(0.0, ge=0)
    routes_on_replica_loop: bool = Field(
        True,
        description="Run the routes on the replica's own event loop (Ray Serve's RAY_SERVE_RUN_USER_CODE_IN_SEPARATE_THREAD=0) "
        "instead of a second loop in another thread: one thread hop less per request, in and out. Safe here because the "
        "engine decodes in its own thread and no route blocks; false restores Serve's default.",
    )
    max_prompt_tokens: int = Field(1024, ge=8)
    max_new_tokens: int = Field(256, ge=1)
    max_turns: int = Field(8, ge=1)
    max_n: int = Field(4, ge=1, description="Most completions per request (OpenAI `n`).")
    max_concurrent_requests: int = Field(32, ge=1, description="Requests decoded at once on a replica.")
    max_queued_requests: int = Field(64, ge=0, description="Requests waiting beyond those; more get 503.")
    request_timeout_s: float = Field(
        300.0, gt=0, description="Every request ends within this: past it, a JSON error (504), or an SSE error event then [DONE]."
    )
    stream_interval_s: float = Field(
        0.02, ge=0, description="Least time between two server-sent events of a stream (the text made meanwhile goes as one event)."
    )
    max_body_bytes: int = Field(
        16 * 1024 * 1024, ge=1024,
        description="Largest request body; a larger one answers 413 without being read further.",
    )
    max_request_messages: int = Field(
        1000, ge=1,
        description="Longest list in a request (context messages, chat messages, prompts, stop strings); a longer "
        "one answers 400 before anything is built from it. Contexts within it are still trimmed to the "
        "checkpoint's own data.max_context_messages.",
    )
    max_request_chars: int = Field(
        1_000_000, ge=1000,
        description="Most characters of text in one request, all its strings together; more answers 400 before "
        "any tokenisation.",
    )
    log_content: bool = Field(False, description="Write message content to logs (off: only sizes and timings).")
    unknown_speakers: Literal["guest", "reject"] = Field(
        "guest",
        description="A name the speaker map does not know: `guest` gives it the shared others token (the request "
        "succeeds), `reject` answers 400 with the known names.",
    )
    default_username: str | None = Field(
        None, description="Chat completions: the username of `user` messages without `name` (unset: the guest token)."
    )
    assistant_name: str | None = Field(
        None,
        description="Chat completions: who `assistant` messages without `name` (the model's earlier turns) were "
        "spoken by, unless the request forces `speaker` (unset: the guest token).",
    )
    blocking: bool = Field(True, description="`fizzbot serve` waits until interrupted.")


class IrcBotConfig(Section):
    """How `fizzbot bot` reaches an IRC network."""

    host: str = Field("127.0.0.1", description="IRC server to connect to.")
    port: int = Field(6667, ge=1, le=65535)
    tls: bool = Field(False, description="Connect with TLS (usually port 6697).")
    password_env: str | None = Field(None, description="Environment variable holding the server password (PASS), if any.")
    realname: str = Field("fizzbot", description="The IRC real name (gecos) shown by WHOIS.")


class DiscordBotConfig(Section):
    """How `fizzbot bot` reaches Discord (a bot account; see the README's steps)."""

    token_env: str = Field("DISCORD_BOT_TOKEN", description="Environment variable holding the bot token.")
    token_file: str | None = Field(None, description="A file holding the bot token (read when the variable is unset).")


class BotConfig(Section):
    """`fizzbot bot`: fizzbot taking part in a channel, through the Serve endpoint."""

    platform: Literal["irc", "discord"] = Field("irc", description="Which chat the bot joins.")
    endpoint: str = Field("http://127.0.0.1:8000", description="Base URL of the fizzbot Serve application.")
    api_key_env: str = Field("FIZZBOT_API_KEY", description="Environment variable holding the endpoint's API key, if it has one.")
    model: str | None = Field(None, description="Adapter (community) to ask for; unset: the server's default model.")
    nick: str = Field("fizzbot", description="The bot's name in the channel; messages that address it get an answer.")
    channels: list[str] = Field(default_factory=list, description="Allow-list: the only channels the bot reads and speaks in (IRC `#chan`; Discord names or ids).")
    owners: list[str] = Field(default_factory=list, description="Users (nicks or Discord user ids) whose stop command is obeyed.")
    stop_command: str = Field("!fizzbot stop", description="An owner who sends this in a channel stops the bot.")
    speak_as: str | None = Field(None, description="Force the persona the bot speaks as (a username in the model's speaker map); unset: the model chooses.")
    reply_when_addressed: bool = Field(True, description="Answer messages that address the bot (by name at the start, or a mention).")
    chime_in_rate: float = Field(
        0.0, ge=0.0, le=1.0, description="Chance of speaking unprompted after a message, while the channel is active (0: never)."
    )
    active_messages: int = Field(4, ge=1, description="A channel is active when it had this many messages...")
    active_window_seconds: float = Field(300.0, gt=0, description="...within this many seconds.")
    cooldown_seconds: float = Field(20.0, ge=0, description="Least time between two of the bot's answers in one channel.")
    max_replies_per_minute: int = Field(6, ge=1, description="Rate limit over all channels.")
    context_messages: int = Field(20, ge=1, description="Recent messages of the channel sent as the context.")
    ignore_nicks: list[str] = Field(default_factory=list, description="Other bots: never answered, and left out of the context.")
    persona_format: str = Field("[{username}] {content}", description="How an answer is posted; {username} is the persona, {content} the text.")
    max_new_tokens: int = Field(64, ge=1)
    min_new_tokens: int = Field(
        1, ge=0, description="An answer has at least this many tokens: a young model that would end its message at once "
        "still says something (the endpoint's min_new_tokens)."
    )
    temperature: float | None = Field(None, ge=0.0, description="Sampling temperature; unset: the server's default.")
    request_timeout_s: float = Field(60.0, gt=0, description="How long to wait for the endpoint.")
    log_dir: str | None = Field(
        None,
        description="Opt-in: write what the channels say (people only, never the bot) as seed-format JSON lines, "
        "one file per channel, for `fizzbot update`. Unset: nothing is written.",
    )
    irc: IrcBotConfig = Field(default_factory=IrcBotConfig)
    discord: DiscordBotConfig = Field(default_factory=DiscordBotConfig)


class FizzbotConfig(Section):
    data: DataConfig = Field(default_factory=DataConfig)
    model: ModelConfig = Field(default_factory=ModelConfig)
    training: TrainingConfig = Field(default_factory=TrainingConfig)
    run: RunConfig = Field(default_factory=RunConfig)
    generate: GenerateConfig = Field(default_factory=GenerateConfig)
    eval: EvalConfig = Field(default_factory=EvalConfig)
    serve: ServeConfig = Field(default_factory=ServeConfig)
    bot: BotConfig = Field(default_factory=BotConfig)
    update: UpdateConfig = Field(default_factory=UpdateConfig)

    @model_validator(mode="after")
    def _check_combinations(self) -> "FizzbotConfig":
        if self.training.deepspeed and self.model.method == "qlora":
            raise ValueError(
                "training.deepspeed does not combine with model.method=qlora (4-bit weights are not "
                "sharded by ZeRO); use model.method=lora or training.deepspeed=false"
            )
        return self

    def to_yaml(self) -> str:
        return yaml.safe_dump(self.model_dump(mode="json"), sort_keys=False)


# --- loading ---------------------------------------------------------------------------------------


def parse_override(text: str) -> tuple[list[str], Any]:
    """`training.max_steps=50` -> (["training", "max_steps"], 50); the value is read as YAML."""
    if "=" not in text:
        raise ConfigError(f"override {text!r} is not key=value (example: training.max_steps=50)")
    key, raw = text.split("=", 1)
    key = key.strip()
    if not key or any(not part for part in key.split(".")):
        raise ConfigError(f"override {text!r} has an empty key")
    try:
        value = yaml.safe_load(raw) if raw.strip() else None
    except yaml.YAMLError:
        value = raw  # not valid YAML: take it as a plain string
    return key.split("."), value


def list_override(key: str, values: list[str]) -> str:
    """A `key=[...]` override for a list of strings (JSON is valid YAML, and quotes odd paths)."""
    import json

    return f"{key}={json.dumps(list(values))}"


def _known_keys(model: type[BaseModel], prefix: str = "") -> list[str]:
    keys = []
    for name, field in model.model_fields.items():
        keys.append(prefix + name)
        annotation = field.annotation
        sub = getattr(annotation, "__args__", (annotation,))
        for candidate in sub:
            if isinstance(candidate, type) and issubclass(candidate, BaseModel):
                keys.extend(_known_keys(candidate, prefix + name + "."))
    return keys


def _set_path(tree: dict, path: list[str], value: Any) -> None:
    node = tree
    for part in path[:-1]:
        child = node.get(part)
        if not isinstance(child, dict):
            child = {}
            node[part] = child
        node = child
    node[path[-1]] = value


def _describe(errors: ValidationError, source: str) -> str:
    known = _known_keys(FizzbotConfig)
    lines = []
    for err in errors.errors():
        key = ".".join(str(p) for p in err["loc"])
        if err["type"] == "extra_forbidden":
            close = difflib.get_close_matches(key, known, n=1)
            hint = f" (did you mean {close[0]}?)" if close else ""
            lines.append(f"{key}: unknown key{hint}")
        else:
            msg = err["msg"].removeprefix("Value error, ")
            got = err.get("input")
            shown = "" if isinstance(got, dict) or got is None else f" (got {got!r})"
            lines.append(f"{key}: {msg}{shown}" if key else msg)
    return f"invalid config{source}:\n  " + "\n  ".join(lines)


def load_config(path: str | Path | None = None, overrides: list[str] | None = None) -> FizzbotConfig:
    """Read a YAML config (or the defaults), apply `key.sub=value` overrides, validate."""
    tree: dict = {}
    source = ""
    if path is not None:
        path = Path(path)
        source = f" ({path})"
        if not path.is_file():
            raise ConfigError(f"config file {path} does not exist")
        try:
            loaded = yaml.safe_load(path.read_text(encoding="utf-8"))
        except yaml.YAMLError as exc:
            raise ConfigError(f"{path}: not valid YAML: {exc}") from None
        if loaded is None:
            loaded = {}
        if not isinstance(loaded, dict):
            raise ConfigError(f"{path}: the top level must be a mapping of sections (data:, model:, ...)")
        tree = copy.deepcopy(loaded)
    for text in overrides or []:
        keys, value = parse_override(text)
        _set_path(tree, keys, value)
    try:
        return FizzbotConfig.model_validate(tree)
    except ValidationError as exc:
        raise ConfigError(_describe(exc, source)) from None


def replace(cfg: FizzbotConfig, *overrides: str) -> FizzbotConfig:
    """A copy of `cfg` with overrides applied and validated."""
    tree = cfg.model_dump(mode="json")
    for text in overrides:
        keys, value = parse_override(text)
        _set_path(tree, keys, value)
    try:
        return FizzbotConfig.model_validate(tree)
    except ValidationError as exc:
        raise ConfigError(_describe(exc, "")) from None
