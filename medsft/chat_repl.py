"""The terminal chat of inference.py and inference_lora.py: one streamed ``--question`` or a multi-turn session
(/reset, /exit, /thinking, Ctrl-C stops an answer), printed as 【思考】 then 【回答】."""

from __future__ import annotations

import sys
import threading

from .chat import SWITCHES, THINK_CLOSE, THINK_OPEN, question_mode, split_output
from .generate import stream
from .files import MedsftError, visible

def choose_mode(question, input_path, argv=None) -> str:
    """'question', 'predict' or 'chat' from the QUESTION and INPUT constants; an empty --question is an error."""
    argv = sys.argv[1:] if argv is None else argv
    given = any(a.split("=", 1)[0] == "--question" for a in argv)
    if question is not None and not isinstance(question, str):
        question = str(question)
    if (given or question) and not (question or "").strip():
        raise MedsftError("empty question: pass --question=\"your question\", or leave it out for the interactive chat")
    if question and input_path:
        raise MedsftError("pass either --question (one answer) or --input (batch predictions), not both")
    return "question" if question else "predict" if input_path else "chat"

class SectionPrinter:
    """A streamed text's reasoning and answer under separate headers; chunks may split the tags anywhere, which are
    never printed, nor the header of an empty think."""

    THINK_HEADER = "【思考】"
    ANSWER_HEADER = "【回答】"

    def __init__(self, write, color: bool = False):
        self.write = write
        self.color = color
        self.buf = ""
        self.state = "start"  # start -> think_lead -> think -> answer_lead -> answer, or start -> answer

    def _header(self, text: str) -> None:
        if self.color:
            self.write("\033[0m")
        self.write(("\n" if self.state not in ("start", "think_lead") else "") + text + "\n")
        if self.color and text == self.THINK_HEADER:
            self.write("\033[2m")

    def feed(self, text: str) -> None:
        self.buf += visible(text)  # the model's escape sequences are shown, never run by the terminal
        while True:
            if self.state == "start":
                head = self.buf.lstrip()
                if not head or (THINK_OPEN.startswith(head) and head != THINK_OPEN):
                    return  # nothing yet, or a <think> tag still arriving
                if head.startswith(THINK_OPEN):  # its header waits for the first word: an empty think gets none
                    self.state, self.buf = "think_lead", head[len(THINK_OPEN):]
                else:
                    self._header(self.ANSWER_HEADER)
                    self.state, self.buf = "answer", head
                continue
            if self.state in ("think_lead", "answer_lead"):  # whitespace right after a tag is not shown
                self.buf = self.buf.lstrip()
                if not self.buf:
                    return
                if self.state == "think_lead":
                    if THINK_CLOSE.startswith(self.buf) and self.buf != THINK_CLOSE:
                        return  # a </think> still arriving
                    if self.buf.startswith(THINK_CLOSE):  # the empty think of a non-thinking answer
                        self._header(self.ANSWER_HEADER)
                        self.state, self.buf = "answer_lead", self.buf[len(THINK_CLOSE):]
                        continue
                    self._header(self.THINK_HEADER)
                self.state = "think" if self.state == "think_lead" else "answer"
                continue
            if self.state == "think":
                end = self.buf.find(THINK_CLOSE)
                if end >= 0:
                    self.write(self.buf[:end].rstrip())
                    self._header(self.ANSWER_HEADER)
                    self.state, self.buf = "answer_lead", self.buf[end + len(THINK_CLOSE):]
                    continue
                keep = next((k for k in range(min(len(THINK_CLOSE) - 1, len(self.buf)), 0, -1)
                             if THINK_CLOSE.startswith(self.buf[-k:])), 0)
                body, tail = self.buf[:len(self.buf) - keep], self.buf[len(self.buf) - keep:]
                stripped = body.rstrip()  # whitespace before </think> is not shown
                self.write(stripped)
                self.buf = body[len(stripped):] + tail
                return
            self.write(self.buf)
            self.buf = ""
            return

    def close(self) -> None:
        """End the message: flush what was held back (an unfinished tag is shown as text)."""
        if self.state == "start" and self.buf.strip():
            self._header(self.ANSWER_HEADER)
            self.state = "answer"
        if self.state == "think_lead" and self.buf.strip():  # cut off inside a </think> tag
            self._header(self.THINK_HEADER)
            self.state = "think"
        if self.state in ("think", "answer"):
            self.write(self.buf.rstrip() if self.state == "think" else self.buf)
        if self.color:
            self.write("\033[0m")
        self.write("\n")
        self.buf, self.state = "", "start"

CHAT_HELP = ("输入问题后回车。/reset 清空对话历史，/exit 退出（Ctrl-D 也可）；回答中按 Ctrl-C 可中止当前回答。\n"
             "思考模式：问题末尾加 /no_think 本轮不思考、加 /think 本轮思考；/thinking 切换默认（思考 ↔ 不思考）。")
REPL_MODE_LINES = {"think": "思考模式：开",
                   "no_think_soft": "思考模式：关（/no_think）",
                   "no_think_hard": "思考模式：关（enable_thinking=False）"}

def message_mode(text: str, default: str) -> str:
    """The mode a chat message is answered in: a ``/think`` or ``/no_think`` in it decides (the last one wins, and
    ``/think`` reopens thinking even when it is off by default); otherwise the session's default."""
    return question_mode(text) if any(s in text for s in SWITCHES) else default

def _answer(model, tokenizer, question, history, out, *, color, turn, gen_kwargs, mode="think") -> dict | None:
    """Stream one answer to ``out``, under a line naming its thinking mode; return the result, or None when the
    user stopped it with Ctrl-C."""
    out.write(f"〔{REPL_MODE_LINES[mode]}〕\n")
    printer = SectionPrinter(lambda s: (out.write(s), out.flush()), color=color)
    stop = threading.Event()
    try:
        result = stream(model, tokenizer, question, printer.feed, history=history, stop_event=stop, mode=mode,
                        **{**gen_kwargs, "seed": gen_kwargs["seed"] + turn})
    except KeyboardInterrupt:
        printer.close()
        out.write("（已中止）\n")
        return None
    printer.close()
    if not result["finished"]:
        out.write(f"（达到 max_new_tokens={gen_kwargs['max_new_tokens']}，回答被截断）\n")
    out.flush()
    return result

def chat(model, tokenizer, *, question=None, max_new_tokens=2048, do_sample=True, seed=42, system=None,
         temperature=None, top_p=None, top_k=None, stdin=None, out=None, mode="think") -> int:
    """Answer ``question`` (streamed), or chat on ``stdin`` in ``mode`` by default: ``/think`` or ``/no_think`` in a
    message overrides it once (alone: sets it), ``/thinking`` flips it. History as Qwen3's template expects."""
    stdin = stdin or sys.stdin
    out = out or sys.stdout
    color = out.isatty() if hasattr(out, "isatty") else False
    gen_kwargs = {"max_new_tokens": max_new_tokens, "do_sample": do_sample, "seed": seed, "system": system,
                  "temperature": temperature, "top_p": top_p, "top_k": top_k}
    if question is not None:
        _answer(model, tokenizer, question, None, out, color=color, turn=0, gen_kwargs=gen_kwargs,
                mode=message_mode(question, mode))
        return 0
    tty = stdin is sys.stdin and stdin.isatty()
    out.write(CHAT_HELP + "\n")
    history: list[dict] = []
    turn = 0
    while True:
        try:
            if tty:
                line = input("\n用户> ")
            else:
                out.write("\n用户> ")
                line = stdin.readline()
                if not line:
                    raise EOFError
                out.write(line if line.endswith("\n") else line + "\n")  # echo, so a piped transcript reads well
        except (EOFError, KeyboardInterrupt):
            out.write("\n")
            return 0
        text = line.strip()
        if not text:
            continue
        if text in ("/exit", "/quit"):
            return 0
        if text == "/reset":
            history, turn = [], 0
            out.write("（对话历史已清空）\n")
            continue
        if text in ("/thinking",) + SWITCHES:
            if text == "/thinking":
                mode = "no_think_hard" if mode == "think" else "think"
            else:
                mode = "think" if text == "/think" else "no_think_hard"
            out.write(f"（默认{REPL_MODE_LINES[mode]}）\n")
            continue
        if text.startswith("/"):
            out.write(f"未知命令 {text}。{CHAT_HELP}\n")
            continue
        result = _answer(model, tokenizer, text, history, out, color=color, turn=turn, gen_kwargs=gen_kwargs,
                         mode=message_mode(text, mode))
        if result is None:
            continue
        think, answer, _ = split_output(result["output"])
        history += [{"role": "user", "content": text},
                    {"role": "assistant", "content": answer, "reasoning_content": think}]
        turn += 1
