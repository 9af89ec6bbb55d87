"""``longrl datagen`` configuration: YAML + dotted overrides (``questions.per_category=2``), unknown keys refused."""

from __future__ import annotations

from dataclasses import dataclass, field

CATEGORIES = ["Temporal", "Goal & Purpose", "Plot & Narrative", "Spatial"]


@dataclass
class EndpointConfig:
    base_url: str = ""  # an OpenAI-compatible endpoint, e.g. http://127.0.0.1:8000/v1 (longrl serve)
    model: str = ""  # the model name the endpoint serves
    api_key_env: str = "OPENAI_API_KEY"  # env var holding the key (read once, sent only as a Bearer header)
    timeout_s: float = 60.0  # per HTTP request
    max_retries: int = 4  # retries on timeouts, connection errors, HTTP 429/5xx and non-completion bodies
    backoff_s: float = 1.0  # first retry waits this long, doubling after each failure
    concurrency: int = 8  # requests in flight at once


@dataclass
class SplitConfig:
    mode: str = "fixed"  # fixed: clips of clip_seconds; scene: also cut where the picture changes
    clip_seconds: float = 10.0  # clip length (fixed) or the longest clip (scene)
    min_clip_seconds: float = 1.0  # scene mode: no cut closer than this to the clip's start
    scene_threshold: float = 30.0  # scene mode: mean absolute pixel change (0-255) between frames that cuts


@dataclass
class CaptionConfig:
    frames_per_clip: int = 4  # frames sampled uniformly from each clip
    frame_mode: str = "images"  # images: one image part per frame; mosaic: the frames tiled into one image
    max_tokens: int = 256  # per caption
    temperature: float = 0.2  # sampling temperature of the captioner


@dataclass
class QuestionConfig:
    categories: list[str] = field(default_factory=lambda: list(CATEGORIES))  # one generation request per category
    per_category: int = 1  # questions asked for per video and category
    num_options: int = 4  # options per question
    max_tokens: int = 768  # per generated question
    temperature: float = 0.7  # sampling temperature of the question writer


@dataclass
class FilterConfig:
    text_only: bool = True  # drop questions the endpoint answers correctly without the video
    pilot_base_url: str = ""  # the pilot model's endpoint (empty = endpoint.base_url)
    pilot_model: str = ""  # empty = endpoint.model
    pilot_input: str = "timeline"  # what the pilot sees: timeline (captions as text) or video (a video part)
    pilot_num_frames: int = 16  # frames of the video part when pilot_input=video
    pilot_samples: int = 4  # answers sampled from the pilot per question (0 = no difficulty filter)
    pass_rate_min: float = 0.0  # keep questions the pilot answers right at least this often
    pass_rate_max: float = 0.75  # ... and at most this often (too easy above)


@dataclass
class OutputConfig:
    format: str = "jsonl"  # jsonl or parquet
    sft_fraction: float = 0.5  # share of the kept questions (by id hash) for CoT-SFT; the rest is the RL split


@dataclass
class DatagenConfig:
    videos: str = ""  # a directory of videos (searched recursively) or a .jsonl/.parquet of rows with `video`
    out_dir: str = "datagen"  # stage outputs, clips, rows and report.json go here
    endpoint: EndpointConfig = field(default_factory=EndpointConfig)  # the captioner and question writer
    split: SplitConfig = field(default_factory=SplitConfig)  # stage (a)
    caption: CaptionConfig = field(default_factory=CaptionConfig)  # stage (b)
    questions: QuestionConfig = field(default_factory=QuestionConfig)  # stage (d)
    filter: FilterConfig = field(default_factory=FilterConfig)  # stage (f)
    output: OutputConfig = field(default_factory=OutputConfig)  # stage (g)
    progress: bool = True  # tqdm bars with ETA and token counts
