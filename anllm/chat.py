"""Bounded-memory chat and saved documents: one cache across turns, each turn appending only its new tokens.

A :class:`ChatSession` renders the whole conversation with the tokenizer's chat template, checks that the text the
cache already holds is an unchanged prefix of it, and feeds only the suffix (the new user turn and the assistant
header); earlier turns are never encoded again. With the anchor policy the cache holds anchors + the open sentence
(+ sinks / window), so memory stays bounded however long the conversation (arXiv 2402.07616 §3.3).

A document is read as the opening of the next user message (``compress``): its K/V can be saved to a file once
and each question continues a copy of it, which is what ``anllm compress`` / ``anllm generate --cache`` do.
"""

from __future__ import annotations

import dataclasses
import os
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import torch

from anllm.anchors import insert_ac
from anllm.cache import PolicyCache
from anllm.cache_io import describe_policy, read_cache, save_cache
from anllm.config import AnLLMError, GenerationConfig
from anllm.generation import GenerationResponse, decode_step, eos_ids, forward_chunk, make_cache, stream_generate
from anllm.policies import EvictionPolicy
from anllm.progress import progress_bar
from anllm.renames import renamed_kwargs
from anllm.stats import RunStats

DOC_SEPARATOR = "\n\n"  # between a document and the question that follows it in the same user message
PLAIN_TEMPLATE = "{% for m in messages %}{{ m['content'] }}\n{% endfor %}"  # without a chat template (--raw)
_MARK = "\x00anllm-question\x00"  # where the question will go, to cut a document's rendered prefix


@dataclass
class TurnStats:
    """What one turn cost and what the cache holds after it."""

    turn: int
    prompt_tokens: int  # new tokens fed for this turn (template markup + user text)
    answer_tokens: int
    tokens_seen: int  # every token the cache has seen (what a full cache would hold)
    kv_entries: int  # entries held per layer
    kv_bytes: int  # bytes of K/V held, all layers
    first_token_s: float  # from the call to the first answer token
    seconds: float  # the whole turn


class ChatSession:
    """A conversation over one :class:`~anllm.cache.PolicyCache` that is never re-encoded.

    Args:
        lm: the :class:`~anllm.models.LoadedModel`.
        policy: cache policy (``"anchor"``, ``"full"``, a spec or an object); ignored when ``cache`` is given.
        gen: decoding settings (stop strings are not used: an answer ends at EOS or ``max_new_tokens``).
        chat: render turns with the tokenizer's chat template (when it has one); False = plain text turns.
        cache, state: where :meth:`reset` returns to (a loaded document); copied, never modified.
    """

    @renamed_kwargs(mode="policy")
    def __init__(
        self,
        lm,
        policy: str | EvictionPolicy = "anchor",
        *,
        gen: GenerationConfig | None = None,
        chat: bool = True,
        cache: PolicyCache | None = None,
        state: dict | None = None,
    ) -> None:
        self.lm = lm
        self.policy = cache.policy if cache is not None else lm.policy(policy)
        self.gen = dataclasses.replace(gen or GenerationConfig(), stop_strings=())
        state = dict(state or {})
        self.chat = bool(state.get("chat", chat)) and bool(getattr(lm.tokenizer, "chat_template", None))
        self._start = (cache, state)
        self.reset()

    # -- state --------------------------------------------------------------------------------------------------
    def reset(self) -> None:
        """Back to the start: an empty cache, or a fresh copy of the loaded document."""
        cache, state = self._start
        self.cache = cache.copy() if cache is not None else make_cache(self.lm, self.policy)
        self.messages: list[dict] = [dict(m) for m in state.get("messages", [])]
        self.pending: str = state.get("pending", "")  # start of the next user message, already in the cache
        self.text: str = state.get("text", "")  # the rendered conversation whose tokens the cache has seen
        self.ids: list[int] = list(state.get("ids", []))  # those tokens (ints only: for checks, not attention)
        self.answer_spans: list[tuple[int, int]] = []  # [start, end) of each answer in ids
        self.turns: list[TurnStats] = []

    def state(self) -> dict:
        """The JSON state saved next to the K/V (see :meth:`save`)."""
        return {
            "chat": self.chat,
            "messages": self.messages,
            "pending": self.pending,
            "text": self.text,
            "ids": self.ids,
        }

    def checkpoint(self) -> tuple:
        """A copy of the cache and the conversation; :meth:`restore` returns to it (e.g. after a failed turn)."""
        conversation = ([dict(m) for m in self.messages], self.pending, self.text, list(self.ids))
        return self.cache.copy(), conversation, list(self.answer_spans), list(self.turns)

    def restore(self, checkpoint: tuple) -> None:
        """Back to a :meth:`checkpoint` (which stays usable: everything is copied again)."""
        cache, (messages, pending, text, ids), spans, turns = checkpoint
        self.cache = cache.copy()
        self.messages, self.pending, self.text, self.ids = [dict(m) for m in messages], pending, text, list(ids)
        self.answer_spans, self.turns = list(spans), list(turns)

    def stats(self) -> dict:
        """Tokens seen, KV entries and bytes held (valid and allocated), entries evicted, kept fraction, turns."""
        c = self.cache
        s = RunStats.of_cache(c)
        return {
            "policy": describe_policy(c.policy),
            "turns": len(self.turns),
            "tokens_seen": s.kv_full_entries,
            "kv_entries": s.kv_entries,
            "kv_bytes": s.kv_bytes,
            "allocated_bytes": c.allocated_bytes(),
            "n_evicted": s.n_evicted,
            "kv_kept_frac": s.kv_kept_frac,
        }

    # -- text -> new tokens -------------------------------------------------------------------------------------
    def _content(self, text: str) -> str:
        return insert_ac(text) if self.lm.anchor.kind == "ac" else text

    def _render(self, messages: list[dict], generation_prompt: bool = True) -> str:
        kw = {} if self.chat else {"chat_template": PLAIN_TEMPLATE}
        return self.lm.tokenizer.apply_chat_template(
            messages, add_generation_prompt=generation_prompt and self.chat, tokenize=False, **kw
        )

    def _suffix_ids(self, rendered: str) -> list[int]:
        """Token ids of what ``rendered`` adds to the text already in the cache (which must be its prefix)."""
        if not rendered.startswith(self.text):
            raise AnLLMError(
                "the chat template renders the earlier turns differently once a turn is added, so the new turn "
                "cannot be appended to the cache; use chat=False (--raw) or a template that keeps earlier turns as is"
            )
        return self.lm.tokenizer(rendered[len(self.text) :], add_special_tokens=False)["input_ids"]

    # -- reading and asking -------------------------------------------------------------------------------------
    def read(
        self,
        document: str,
        *,
        progress: bool = False,
        on_chunk: Callable[[int, int], None] | None = None,
        chunk_size: int | None = None,
    ) -> int:
        """Feed ``document`` as the opening of the next user message (what ``anllm compress`` saves).

        Args:
            progress: a progress bar on stderr.
            on_chunk: called after each chunk with (tokens read so far, tokens in all); an exception it raises
                stops the reading (the session is then left half-read: discard it).
            chunk_size: tokens per forward pass (default: the model's ``anchor.chunk_size``); 0 = the whole
                document in one pass, as ``stream_generate`` prefills a full cache.
        Returns:
            the number of tokens read.
        """
        if not document.strip():
            raise AnLLMError("the document is empty")
        content = self.pending + self._content(document.rstrip()) + DOC_SEPARATOR
        rendered = self._render([*self.messages, {"role": "user", "content": content + _MARK}])
        if rendered.count(_MARK) != 1:
            raise AnLLMError("the chat template does not keep the user message as is; use chat=False (--raw)")
        text = rendered[: rendered.index(_MARK)]
        ids = self._suffix_ids(text)
        self._check_fits(len(ids), "the document is")
        model = self.lm.model
        step = (self.lm.anchor.chunk_size if chunk_size is None else chunk_size) or max(len(ids), 1)
        device = next(model.parameters()).device
        no_logits = torch.empty(0, dtype=torch.long, device=device)  # keep no position: skip the LM head
        bar = progress_bar(desc="compress", total=len(ids), unit="tok", enabled=progress)
        with torch.inference_mode():
            for s in range(0, len(ids), step):
                chunk = torch.tensor([ids[s : s + step]], device=device)  # (1, Q)
                forward_chunk(model, self.cache, chunk, logits_to_keep=no_logits)  # nobody reads them
                bar.update(chunk.shape[1])
                if on_chunk is not None:
                    on_chunk(s + chunk.shape[1], len(ids))
        bar.close()
        self.ids += ids
        self.text, self.pending = text, content
        return len(ids)

    def _turn(self, question: str) -> tuple[dict, str, list[int]]:
        """The user message for ``question``, the conversation rendered with it, and the token ids it adds."""
        user = {"role": "user", "content": self.pending + self._content(question)}
        rendered = self._render([*self.messages, user])
        return user, rendered, self._suffix_ids(rendered)

    def prompt_ids(self, question: str) -> list[int]:
        """The token ids :meth:`ask` would feed for ``question`` now (the new turn only; ``ids`` holds the rest)."""
        return self._turn(question)[2]

    def ask(self, question: str) -> Iterator[GenerationResponse]:
        """Append a user turn and stream the answer; the cache then holds the question and the whole answer.

        Stopping the iteration early keeps the answer so far (it becomes the assistant turn).
        """
        if not isinstance(question, str) or not question.strip():
            raise AnLLMError("the message is empty")
        t0 = time.perf_counter()
        user, rendered, ids = self._turn(question)
        self._check_fits(len(ids) + 1)
        start, last, parts, tokens, first = len(self.ids), None, [], [], None
        stop = eos_ids(self.lm) if self.gen.stop_on_eos else set()
        try:
            for r in stream_generate(self.lm, ids, gen=self.gen, cache=self.cache):
                if last is None:
                    first = time.perf_counter() - t0
                    self.ids += ids  # the prompt is in the cache once the first token exists
                    self.text = rendered
                last = r
                parts.append(r.text)
                if r.token not in stop:
                    tokens.append(r.token)
                yield r
        finally:
            if last is not None:
                self._commit(user, "".join(parts), tokens, last, start, len(ids), first, t0)

    def _commit(self, user, answer, tokens, last, start, n_prompt, first, t0) -> None:
        if tokens and last.token == tokens[-1]:  # the last token was sampled but not fed (EOS never is)
            with torch.inference_mode():
                decode_step(self.lm.model, self.cache, torch.tensor([tokens[-1]], device=self.cache.meta.token.device))
        self.ids += tokens
        self.answer_spans.append((start + n_prompt, len(self.ids)))
        self.messages += [user, {"role": "assistant", "content": answer}]
        self.text += answer
        self.pending = ""
        s = self.stats()
        self.turns.append(
            TurnStats(
                len(self.turns) + 1, n_prompt, len(tokens), s["tokens_seen"], s["kv_entries"], s["kv_bytes"],
                first or 0.0, time.perf_counter() - t0,
            )
        )  # fmt: skip

    def reply(self, question: str) -> str:
        """:meth:`ask`, returning the whole answer."""
        return "".join(r.text for r in self.ask(question))

    def _check_fits(self, n_new: int, what: str | None = None) -> None:
        limit = getattr(self.lm.model.config, "max_position_embeddings", None)
        seen = int(self.cache.n_seen[0]) if self.cache.n_seen is not None else 0
        if limit is not None and seen + n_new > limit and what is not None and not seen:
            raise AnLLMError(
                f"{what} {n_new:,} tokens long but the model supports {limit:,} positions (questions need some "
                "too); use a shorter text"
            )
        if limit is not None and seen + n_new > limit:
            raise AnLLMError(
                f"the conversation would reach {seen + n_new} tokens but the model supports {limit} positions; "
                "start again (/reset)"
            )

    # -- files --------------------------------------------------------------------------------------------------
    def save(self, path: str | os.PathLike):
        """Write the cache and the conversation state to one file (atomic); :meth:`load` continues from it."""
        return save_cache(self.cache, self.lm, path, extra={"chat": self.state()})

    @classmethod
    @renamed_kwargs(mode="policy")
    def load(
        cls,
        lm,
        path: str | os.PathLike,
        policy: str | EvictionPolicy | None = None,
        *,
        gen: GenerationConfig | None = None,
    ) -> ChatSession:
        """A session starting from a saved file (a compressed document or a saved chat); :meth:`reset` returns here."""
        saved = read_cache(lm, path, policy)
        if saved.cache.batch_size != 1:
            raise AnLLMError(f"{path} holds {saved.cache.batch_size} rows; a chat continues one")
        return cls(lm, gen=gen, cache=saved.cache, state=saved.extra.get("chat", {}))


@renamed_kwargs(mode="policy")
def compress(
    lm,
    text: str,
    policy: str | EvictionPolicy = "anchor",
    *,
    chat: bool = True,
    progress: bool = False,
    on_chunk: Callable[[int, int], None] | None = None,
    chunk_size: int | None = None,
):
    """A session that has read ``text`` as a document (save it with :meth:`ChatSession.save`); ``on_chunk`` and
    ``chunk_size`` as in :meth:`ChatSession.read`."""
    session = ChatSession(lm, policy, chat=chat)
    session.read(text, progress=progress, on_chunk=on_chunk, chunk_size=chunk_size)
    return session
