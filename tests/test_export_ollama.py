"""export.py's Modelfile as Ollama reads it: the capabilities Ollama infers from its TEMPLATE, which template Ollama
then renders, and what that template renders.

Ollama's rules are mirrored here from its source (github.com/ollama/ollama at fb30760, 2026-08-21; v0.24.0 and v0.30.0
where they differ), each function naming the lines it mirrors; the mirror is first checked on the cases of Ollama's own
tests (thinking/template_test.go, server/images_test.go). With Go present (Debian: apt-get install golang-go), the
TEMPLATE is also rendered by Go's own text/template with the values Ollama passes, and Ollama's tag inference runs on
Go's own parse tree; without Go those tests skip.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest

from test_export import parse_modelfile, run_export

pytest.importorskip("gguf")


@pytest.fixture(scope="module")
def tiny_tokenizer():
    from transformers import AutoTokenizer

    from medsft.models import resolve_model

    return AutoTokenizer.from_pretrained(resolve_model("tiny"))


@pytest.fixture(scope="module")
def written(tmp_path_factory):
    """(Modelfile fields, the GGUF's chat template) of an f16 export of the tiny model."""
    from gguf import GGUFReader

    from medsft.models import resolve_model

    out = tmp_path_factory.mktemp("ollama")
    run_export(f"--model_dir={resolve_model('tiny')}", f"--output_dir={out}", "--name=tiny", "--quantization=f16")
    reader = GGUFReader(out / "tiny-f16.gguf")
    return parse_modelfile((out / "Modelfile").read_text(encoding="utf-8")), reader.fields["tokenizer.chat_template"].contents()


# --- a mirror of Ollama's rules --------------------------------------------------------------------------------

_ACTION = re.compile(r"\{\{(-\s)?\s*(.*?)\s*(\s-)?\}\}", re.S)
_STRING = re.compile(r'"(?:[^"\\]|\\.)*"|`[^`]*`|\'(?:[^\'\\]|\\.)*\'')
_NAME = re.compile(r"\)\.\w+(?:\.\w+)*|\$\w*(?:\.\w+)*|(?<![\w$])\.\w+(?:\.\w+)*")
_WS = " \t\r\n"  # what Go's trim markers remove


def idents(body: str) -> list[list[str]]:
    """The FieldNode (`.A.B` -> ["A", "B"]) and VariableNode (`$x.A` -> ["$x", "A"]) idents of an action's commands;
    declared variables (`$i, $_ :=`, `$x =`) and chained fields (`(...).A`) are neither, as in text/template/parse."""
    body = re.sub(r"^\s*\$\w*(?:\s*,\s*\$\w*)?\s*:?=(?!=)", "", _STRING.sub('""', body))
    return [n.split(".") if n.startswith("$") else n[1:].split(".") for n in _NAME.findall(body) if not n.startswith(")")]


def parse(src: str) -> list[dict]:
    """A Go template's tree: text, action, if / range / with (pipe, list, else list); `else if` nests as in Go."""
    root: list = []
    stack: list = [(None, root)]
    pos, trim = 0, False
    for m in _ACTION.finditer(src):
        text = src[pos:m.start()]
        text = text.lstrip(_WS) if trim else text
        text = text.rstrip(_WS) if m.group(1) else text
        if text:
            stack[-1][1].append({"kind": "text", "text": text})
        pos, trim, body = m.end(), bool(m.group(3)), m.group(2)
        word = body.split(None, 1)[0] if body else ""
        if word in ("if", "range", "with"):
            node = {"kind": word, "pipe": idents(body[len(word):]), "list": [], "else": None, "chained": False}
            stack[-1][1].append(node)
            stack.append((node, node["list"]))
        elif word == "else":
            node = stack[-1][0]
            node["else"] = []
            rest = body[4:].strip()
            if rest.startswith("if "):  # {{else if X}}: an if inside the else list, closed by the same {{end}}
                inner = {"kind": "if", "pipe": idents(rest[2:]), "list": [], "else": None, "chained": True}
                node["else"].append(inner)
                stack[-1] = (node, node["else"])
                stack.append((inner, inner["list"]))
            else:
                stack[-1] = (node, node["else"])
        elif word == "end":
            while stack.pop()[0]["chained"]:
                pass
        else:
            assert word not in ("define", "template", "block"), word
            stack[-1][1].append({"kind": "action", "pipe": idents(body)})
    text = src[pos:].lstrip(_WS) if trim else src[pos:]
    if text:
        root.append({"kind": "text", "text": text})
    assert len(stack) == 1, "unclosed block"
    return root


def template_vars(nodes: list[dict]) -> set[str]:
    """template/template.go:171-189 (Vars) and 516-580 (Identifiers): every field and variable ident, lowercased."""
    out = set()
    for n in nodes:
        out |= {part.lower() for ident in n.get("pipe", []) for part in ident}
        for key in ("list", "else"):
            out |= template_vars(n.get(key) or [])
    return out


def infer_tags(nodes: list[dict]) -> tuple[str, str]:
    """thinking/template.go:62-119 (InferTags) and 121-134 (rangeUsesField): at each dot-relative .Thinking whose
    innermost range ranges over .Messages, the first and last text nodes (trimmed) of its innermost list."""
    tags = ["", ""]

    def thinking(pipe, ranges, container):
        for ident in pipe:
            if ident[0] != "Thinking" or not ranges or not any(i[0] == "Messages" for i in ranges[-1]["pipe"]):
                continue
            if container[0]["kind"] == "text":
                tags[0] = container[0]["text"].strip()
            if container[-1]["kind"] == "text":
                tags[1] = container[-1]["text"].strip()

    def walk(container, ranges):
        for n in container:
            if n["kind"] == "text":
                continue
            inner = ranges + [n] if n["kind"] == "range" else ranges
            thinking(n["pipe"], inner, container)
            for key in ("list", "else"):
                if n.get(key):
                    walk(n[key], inner)

    walk(nodes, [])
    return tags[0], tags[1]


def go_capabilities(template: str) -> set[str]:
    """server/images.go:236-261 (goTemplateCapabilities): tools from the variables, thinking from the inferred tags."""
    tree = parse(template)
    opening, closing = infer_tags(tree)
    return {"tools"} & template_vars(tree) | ({"thinking"} if opening and closing else set())


def go_round_trip(template: str) -> bool:
    """server/images.go:263-277 (goTemplateHasToolRoundTrip)."""
    names = template_vars(parse(template))
    return {"tools", "toolcalls"} <= names and any(s in template for s in ('eq .Role "tool"', "tool_response",
                                                                           "TOOL_RESULTS"))


def chat_capabilities(jinja: str) -> set[str]:
    """server/images.go:187-200 (chatTemplateCapabilities), 202-204 (tools), 223-234 (thinking)."""
    caps = {"tools"} if "tools" in jinja or "tool_call" in jinja else set()
    splits = "content.split('</think>')" in jinja or 'content.split("</think>")' in jinja
    if ("<think>" in jinja and "</think>" in jinja) or (splits and "reasoning_content" not in jinja
                                                         and "<SPECIAL_12>" not in jinja):
        caps.add("thinking")
    return caps


def chat_round_trip(jinja: str) -> bool:
    """server/images.go:206-221 (chatTemplateHasToolRoundTrip)."""
    roles = ("tool_response", "tool_results", "role'] == 'tool'", "role'] == \"tool\"", "role\"] == 'tool'",
             'role"] == "tool"', "message.role == 'tool'", 'message.role == "tool"', "ipython")
    return ("tools" in jinja or "tool_call" in jinja) and ("tool_calls" in jinja or "assistant_tool_call" in jinja) \
        and any(s in jinja for s in roles)


def prefers_chat_template(jinja: str, template: str, version: str) -> bool:
    """Whether Ollama renders the GGUF's Jinja instead of the Modelfile TEMPLATE (OLLAMA_GO_TEMPLATE unset):
    server/images.go:790-795 and 295-307 (shouldPreferChatTemplate, v0.31.0 on), v0.30.0's server/images.go:254-262
    (more capabilities only); v0.24.0 and before render the TEMPLATE always (no Jinja path)."""
    chat, go = chat_capabilities(jinja), go_capabilities(template)
    if version == "0.24":
        return False
    if len(chat) > len(go):  # hasMoreCapabilities
        return not go_round_trip(template) or chat_round_trip(jinja)
    if version == "0.30" or chat != go or "tools" not in chat:
        return False
    return chat_round_trip(jinja) and not go_round_trip(template)


# Ollama's own test cases (thinking/template_test.go:16-61, server/images_test.go:113-196), for the mirror itself
_OLLAMA_TAG_CASES = [
    ("""{{ if .Thinking}}/think{{ end }}{{- range $i, $_ := .Messages }}{{- $last := eq (len (slice $.Messages $i)) 1 -}}
{{ if and $last .Thinking }}
<think>{{ .Thinking }}</think>
{{ end }}{{ end }}""", ("<think>", "</think>")),
    ("""{{- range $i, $_ := .Messages }}{{- range $j, $_ := .NotMessages }}{{ if .Thinking }}<think>{{ .Thinking }}</think>
{{ end }}{{ end }}{{ end }}""", ("", "")),
    ("""{{- range $i, $_ := .Messages }}{{ if .Thinking }}
 Some text before   {{ .Thinking }}    Some text after
{{ end }}{{ end }}""", ("Some text before", "Some text after")),
    # the shape export.py wrote before: a variable's .Thinking is a VariableNode, which InferTags never looks at
    ("""{{- range $i, $m := .Messages }}{{ if $m.Thinking }}<think>
{{ $m.Thinking }}
</think>{{ end }}{{ end }}""", ("", "")),
]


@pytest.mark.parametrize("template,tags", _OLLAMA_TAG_CASES)
def test_mirror_infers_tags_as_ollamas_tests_expect(template, tags):
    assert infer_tags(parse(template)) == tags


def test_mirror_chooses_the_template_as_ollamas_tests_expect():
    qwen_jinja = "{% if tools %}{{ tools }}{% endif %}{% set content = (content.split('</think>')|last) %}"
    go_thinking = "{{ range .Messages }}{{ if .Thinking }}<think>{{ .Thinking }}</think>{{ end }}{{ .Content }}{{ end }}"
    assert prefers_chat_template(qwen_jinja, go_thinking, "0.33")  # "prefers Qwen chat template with tools and ..."
    stronger = ("{% if tools %}{{ tools }}{% endif %}\n{% for message in messages %}\n{% if message.tool_calls %}\n"
                "{% for tool_call in message.tool_calls %}{{ tool_call.function.name }}{% endfor %}\n{% endif %}\n"
                "{% if message.role == 'tool' %}tool_response {{ message.content }}{% endif %}\n{% endfor %}")
    go_calls = "{{ if .Tools }}tools{{ end }}\n{{ range .Messages }}\n{{ range .ToolCalls }}{{ .Function.Name }}{{ end }}\n{{ end }}"
    assert prefers_chat_template(stronger, go_calls, "0.33")  # "prefers chat template with stronger tool round trip"
    assert not prefers_chat_template(stronger, go_calls, "0.30")  # v0.30.0: only more capabilities count
    weaker = ("{%- if tools and not available_tools -%}{{- set available_tools = tools -}}{%- endif -%}"
              "{%- if thinking -%}<think></think><response></response>{%- endif -%}")
    go_round = ('{{ if .Tools }}tools{{ end }}\n{{ range .Messages }}\n{{ if eq .Role "tool" }}tool_response{{ else }}'
                '{{ .Role }}{{ end }}\n{{ if .ToolCalls }}<|tool_call|>{{ range .ToolCalls }}{{ .Function.Name }}{{ end }}'
                '{{ else }}{{ .Content }}{{ end }}\n{{ end }}')
    assert not prefers_chat_template(weaker, go_round, "0.33")  # "keeps Go TEMPLATE when chat template has weaker ..."


def test_ollama_finds_thinking_and_tools_and_renders_the_template(written, tiny_tokenizer):
    """Every Ollama version renders the TEMPLATE (none prefers the GGUF's Jinja over it), and it has the thinking and
    the tool capabilities, so `--think`, `"think": true|false` and `tools` are accepted, not refused with HTTP 400."""
    modelfile, jinja = written
    template = modelfile["TEMPLATE"]
    assert infer_tags(parse(template)) == ("<think>", "</think>")  # thinking returned apart, between these tags
    assert go_capabilities(template) == {"tools", "thinking"}
    assert go_round_trip(template)
    real = Path(os.environ.get("MEDSFT_TOKENIZER", Path(__file__).resolve().parents[2] / "shared" / "qwen3-1.7b"))
    jinjas = [jinja] + ([json.loads((real / "tokenizer_config.json").read_text())["chat_template"]]
                        if (real / "tokenizer_config.json").is_file() else [])
    for chat in jinjas:  # the file's own template, and Qwen3's (with tools) when ../shared has it
        for version in ("0.24", "0.30", "0.33"):
            assert not prefers_chat_template(chat, template, version), (version, chat[:80])


def test_modelfile_parameters_and_license(written):
    modelfile, _ = written
    values = dict(modelfile["PARAMETER"])
    assert float(values["repeat_penalty"]) == 1.0  # Ollama before 0.32.10 defaults to 1.1
    assert modelfile["LICENSE"].startswith("apache-2.0")


# --- Go's own text/template ------------------------------------------------------------------------------------

GO_RENDER = r"""// Ollama's Go-template path, offline: Go's own text/template with Ollama's options and the values Ollama passes
// (template/template.go at ollama/ollama fb30760: Parse, Execute, collate, templateMessage, templateTool), and
// Ollama's thinking-tag inference (thinking/template.go: InferTags, rangeUsesField) and template variables
// (template/template.go: Vars, Identifiers), copied from Ollama (MIT license).
package main

import (
	"encoding/json"
	"os"
	"strings"
	"text/template"
	"text/template/parse"
)

type Args map[string]any // templateArgs: prints as compact JSON

func (a Args) String() string {
	if a == nil {
		return "{}"
	}
	b, _ := json.Marshal(a)
	return string(b)
}

type Property struct {
	Type        string `json:"type,omitempty"`
	Description string `json:"description,omitempty"`
	Enum        []any  `json:"enum,omitempty"`
}

type Parameters struct {
	Type       string              `json:"type"`
	Required   []string            `json:"required,omitempty"`
	Properties map[string]Property `json:"properties"`
}

type Function struct {
	Name        string     `json:"name"`
	Description string     `json:"description"`
	Parameters  Parameters `json:"parameters"`
}

type Tool struct { // templateTool: prints as compact JSON
	Type     string   `json:"type"`
	Function Function `json:"function"`
}

func (t Tool) String() string {
	b, _ := json.Marshal(t)
	return string(b)
}

type CallFunction struct {
	Index     int
	Name      string
	Arguments Args
}

type Call struct {
	ID       string
	Function CallFunction
}

type Message struct {
	Role       string
	Content    string
	Thinking   string
	ToolCalls  []Call
	ToolName   string
	ToolCallID string
}

type Case struct {
	Messages   []*Message
	Tools      []Tool
	Think      bool
	IsThinkSet bool
}

func identifiers(n parse.Node) []string {
	var names []string
	switch n := n.(type) {
	case *parse.ListNode:
		for _, c := range n.Nodes {
			names = append(names, identifiers(c)...)
		}
	case *parse.ActionNode:
		names = identifiers(n.Pipe)
	case *parse.IfNode:
		names = identifiers(&n.BranchNode)
	case *parse.RangeNode:
		names = identifiers(&n.BranchNode)
	case *parse.WithNode:
		names = identifiers(&n.BranchNode)
	case *parse.BranchNode:
		names = identifiers(n.Pipe)
		for _, l := range []*parse.ListNode{n.List, n.ElseList} {
			if l != nil {
				names = append(names, identifiers(l)...)
			}
		}
	case *parse.PipeNode:
		for _, c := range n.Cmds {
			for _, a := range c.Args {
				names = append(names, identifiers(a)...)
			}
		}
	case *parse.FieldNode:
		names = n.Ident
	case *parse.VariableNode:
		names = n.Ident
	}
	return names
}

func visit(n parse.Node, enter func(parse.Node) bool, exit func(parse.Node)) {
	if n == nil || !enter(n) {
		return
	}
	switch x := n.(type) {
	case *parse.ListNode:
		for _, c := range x.Nodes {
			visit(c, enter, exit)
		}
	case *parse.BranchNode:
		if x.Pipe != nil {
			visit(x.Pipe, enter, exit)
		}
		if x.List != nil {
			visit(x.List, enter, exit)
		}
		if x.ElseList != nil {
			visit(x.ElseList, enter, exit)
		}
	case *parse.ActionNode:
		visit(x.Pipe, enter, exit)
	case *parse.WithNode:
		visit(&x.BranchNode, enter, exit)
	case *parse.RangeNode:
		visit(&x.BranchNode, enter, exit)
	case *parse.IfNode:
		visit(&x.BranchNode, enter, exit)
	case *parse.TemplateNode:
		visit(x.Pipe, enter, exit)
	case *parse.PipeNode:
		for _, c := range x.Cmds {
			visit(c, enter, exit)
		}
	case *parse.CommandNode:
		for _, a := range x.Args {
			visit(a, enter, exit)
		}
	}
	if exit != nil {
		exit(n)
	}
}

func rangeUsesField(r *parse.RangeNode, field string) bool {
	found := false
	visit(r.BranchNode.Pipe, func(n parse.Node) bool {
		if x, ok := n.(*parse.FieldNode); ok && x.Ident[0] == field {
			found = true
		}
		return true
	}, nil)
	return found
}

func inferTags(t *template.Template) (string, string) {
	ancestors := []parse.Node{}
	opening, closing := "", ""
	enter := func(n parse.Node) bool {
		ancestors = append(ancestors, n)
		if x, ok := n.(*parse.FieldNode); ok && len(x.Ident) > 0 && x.Ident[0] == "Thinking" {
			var recent *parse.RangeNode
			for i := len(ancestors) - 1; i >= 0; i-- {
				if r, ok := ancestors[i].(*parse.RangeNode); ok {
					recent = r
					break
				}
			}
			if recent == nil || !rangeUsesField(recent, "Messages") {
				return true
			}
			for i := len(ancestors) - 1; i >= 0; i-- {
				if l, ok := ancestors[i].(*parse.ListNode); ok {
					if t, ok := l.Nodes[0].(*parse.TextNode); ok {
						opening = strings.TrimSpace(t.String())
					}
					if t, ok := l.Nodes[len(l.Nodes)-1].(*parse.TextNode); ok {
						closing = strings.TrimSpace(t.String())
					}
					break
				}
			}
		}
		return true
	}
	visit(t.Root, enter, func(parse.Node) { ancestors = ancestors[:len(ancestors)-1] })
	return opening, closing
}

// tools/template.go parseTag: the first text inside the `if` over .ToolCalls, cut at "{" (Ollama's tool-call tag)
func toolTag(t *template.Template) string {
	var find func(nodes []parse.Node) *parse.IfNode
	find = func(nodes []parse.Node) *parse.IfNode {
		for _, node := range nodes {
			switch n := node.(type) {
			case *parse.IfNode:
				for _, cmd := range n.Pipe.Cmds {
					for _, arg := range cmd.Args {
						if f, ok := arg.(*parse.FieldNode); ok && slices(f.Ident, "ToolCalls") {
							return n
						}
					}
				}
				if r := find(n.List.Nodes); r != nil {
					return r
				}
				if n.ElseList != nil {
					if r := find(n.ElseList.Nodes); r != nil {
						return r
					}
				}
			case *parse.RangeNode:
				if r := find(n.List.Nodes); r != nil {
					return r
				}
				if n.ElseList != nil {
					if r := find(n.ElseList.Nodes); r != nil {
						return r
					}
				}
			case *parse.WithNode:
				if r := find(n.List.Nodes); r != nil {
					return r
				}
			}
		}
		return nil
	}
	var text func(nodes []parse.Node) *parse.TextNode
	text = func(nodes []parse.Node) *parse.TextNode {
		for _, node := range nodes {
			switch n := node.(type) {
			case *parse.TextNode:
				if len(strings.TrimSpace(string(n.Text))) == 0 {
					continue
				}
				return n
			case *parse.IfNode, *parse.RangeNode, *parse.WithNode:
				var b *parse.BranchNode
				switch x := n.(type) {
				case *parse.IfNode:
					b = &x.BranchNode
				case *parse.RangeNode:
					b = &x.BranchNode
				case *parse.WithNode:
					b = &x.BranchNode
				}
				if t := text(b.List.Nodes); t != nil {
					return t
				}
				if b.ElseList != nil {
					if t := text(b.ElseList.Nodes); t != nil {
						return t
					}
				}
				return nil
			case *parse.ActionNode:
				return nil
			}
		}
		return nil
	}
	tc := find(t.Tree.Root.Nodes)
	if tc == nil {
		return "{"
	}
	tn := text(tc.List.Nodes)
	if tn == nil {
		return "{"
	}
	tag, _, _ := strings.Cut(strings.ReplaceAll(string(tn.Text), "\r\n", "\n"), "{")
	if tag = strings.TrimSpace(tag); tag == "" {
		return "{"
	}
	return tag
}

func slices(s []string, v string) bool {
	for _, x := range s {
		if x == v {
			return true
		}
	}
	return false
}

func main() {
	var in struct {
		Template string `json:"template"`
		Cases    []Case `json:"cases"`
	}
	if err := json.NewDecoder(os.Stdin).Decode(&in); err != nil {
		panic(err)
	}
	funcs := template.FuncMap{"json": func(v any) string { b, _ := json.Marshal(v); return string(b) }}
	t := template.Must(template.New("").Option("missingkey=zero").Funcs(funcs).Parse(in.Template))
	vars := map[string]bool{}
	for _, tt := range t.Templates() {
		for _, n := range tt.Root.Nodes {
			for _, v := range identifiers(n) {
				vars[strings.ToLower(v)] = true
			}
		}
	}
	var out struct {
		Renders []string        `json:"renders"`
		Vars    map[string]bool `json:"vars"`
		Tags    [2]string       `json:"tags"`
		ToolTag string          `json:"tool_tag"`
	}
	out.Vars, out.Renders = vars, []string{}
	out.Tags[0], out.Tags[1] = inferTags(t)
	out.ToolTag = toolTag(t)
	for _, c := range in.Cases {
		var system []string // collate: every system message's content, joined
		for _, m := range c.Messages {
			if m.Role == "system" {
				system = append(system, m.Content)
			}
		}
		var tools any // a nil templateTools when the request has none
		if c.Tools != nil {
			tools = c.Tools
		}
		var b strings.Builder
		err := t.Execute(&b, map[string]any{"System": strings.Join(system, "\n\n"), "Messages": c.Messages,
			"Tools": tools, "Response": "", "Think": c.Think, "ThinkLevel": "", "IsThinkSet": c.IsThinkSet})
		if err != nil {
			panic(err)
		}
		out.Renders = append(out.Renders, b.String())
	}
	json.NewEncoder(os.Stdout).Encode(out)
}
"""

TOOL = {"type": "function", "function": {"name": "lookup_drug", "description": "查药品说明书", "parameters": {
    "type": "object", "required": ["name"], "properties": {"name": {"type": "string", "description": "药名"}}}}}
SYSTEM = {"role": "system", "content": "你是医生"}
ASK = {"role": "user", "content": "布洛芬的用量？"}


def call(name: str) -> dict:
    return {"type": "function", "function": {"name": "lookup_drug", "arguments": {"name": name}}}


CONVERSATIONS = {  # name -> (messages, tools)
    "system prompt": ([SYSTEM, {"role": "user", "content": "头痛三天，伴有低烧，怎么办？"}], None),
    "no system prompt": ([{"role": "user", "content": "hi"}], None),
    "history with thinks": ([SYSTEM, {"role": "user", "content": "q1"}, {"role": "assistant", "content": "a1",
                             "reasoning_content": "t1"}, {"role": "user", "content": "q2"},
                             {"role": "assistant", "content": "a2", "reasoning_content": "t2"},
                             {"role": "user", "content": "q3"}], None),
    "a later system message": ([SYSTEM, {"role": "user", "content": "q1"}, {"role": "system", "content": "简短回答"},
                                {"role": "user", "content": "q2"}], None),
    "tools": ([SYSTEM, ASK], [TOOL]),
    "tools, no system prompt": ([ASK], [TOOL]),
    "tool results": ([SYSTEM, ASK, {"role": "assistant", "content": "", "reasoning_content": "要查说明书",
                                    "tool_calls": [call("布洛芬")]},
                      {"role": "tool", "content": "成人一次0.2g"}, {"role": "tool", "content": "每日不超过4次"}], [TOOL]),
    "tool round trip, then a question": ([SYSTEM, ASK, {"role": "assistant", "content": "我查一下", "reasoning_content": "要查",
                                          "tool_calls": [call("布洛芬"), call("对乙酰氨基酚")]},
                                         {"role": "tool", "content": "成人一次0.2g"},
                                         {"role": "assistant", "content": "一次0.2g", "reasoning_content": "有结果"},
                                         {"role": "user", "content": "谢谢"}], [TOOL]),
}


def go_json(text: str, value) -> str:
    """Ollama prints tools and tool-call arguments with Go's json.Marshal (compact, template/template.go:391-420)
    where Qwen3's Jinja writes `tojson` (", " and ": "): the one byte difference, replaced before comparing."""
    return text.replace(json.dumps(value, ensure_ascii=False), json.dumps(value, ensure_ascii=False, separators=(",", ":")))


@pytest.mark.skipif(not shutil.which("go"), reason="renders the TEMPLATE with Go's text/template (apt-get install golang-go)")
def test_go_renders_the_template_as_qwen3s_chat_template(written, tiny_tokenizer, tmp_path):
    """Through Go's own text/template, with Ollama's values (.Messages with Thinking and ToolCalls, .Tools, .Think,
    .IsThinkSet): the tokenizer's apply_chat_template prompt byte for byte, thinking unset, on and off, for each
    conversation; tool cases need Qwen3's template with tools (the real tokenizer, from ../shared)."""
    modelfile, _ = written
    with_tools = "tools" in (tiny_tokenizer.chat_template or "")
    cases, want, names = [], [], []
    for name, (messages, tools) in CONVERSATIONS.items():
        if tools and not with_tools:
            continue
        for think in (None, True, False):  # None: no think switch set (Qwen3 then thinks)
            text = tiny_tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True,
                                                      enable_thinking=think is not False, **({"tools": tools} if tools else {}))
            for value in (tools or []) + [c["function"]["arguments"] for m in messages for c in m.get("tool_calls", [])]:
                text = go_json(text, value)
            want.append(text)
            names.append(f"{name}, think={think}")
            cases.append({"Think": bool(think), "IsThinkSet": think is not None, "Tools": tools, "Messages": [
                {"Role": m["role"], "Content": m["content"], "Thinking": m.get("reasoning_content", ""),
                 "ToolCalls": [{"Function": {"Name": c["function"]["name"], "Arguments": c["function"]["arguments"]}}
                               for c in m.get("tool_calls", [])]} for m in messages]})
    (tmp_path / "render.go").write_text(GO_RENDER, encoding="utf-8")
    env = {**os.environ, "GOCACHE": str(tmp_path / "gocache"), "GOPATH": str(tmp_path / "gopath"), "GO111MODULE": "off"}
    done = subprocess.run(["go", "run", str(tmp_path / "render.go")], capture_output=True, text=True, env=env,
                          input=json.dumps({"template": modelfile["TEMPLATE"], "cases": cases}), timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    out = json.loads(done.stdout)
    assert out["tags"] == ["<think>", "</think>"]  # Ollama's InferTags on Go's own parse tree: the mirror's answer
    assert out["tool_tag"] == "<tool_call>"  # tools/template.go parseTag: tool calls are parsed after this tag
    assert {"tools", "toolcalls", "messages"} <= set(out["vars"])
    assert sorted(out["vars"]) == sorted(template_vars(parse(modelfile["TEMPLATE"])))  # the mirror's variables too
    for name, got, expected in zip(names, out["renders"], want):
        assert got == expected, name
    assert len(names) == (24 if with_tools else 12)
