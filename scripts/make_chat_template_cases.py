#!/usr/bin/env python3
"""Renders the chat-template test cases with the jinja2 package, configured as Hugging Face's
apply_chat_template configures it, and writes Tests/Fixtures/chat_templates/cases.json.

Environment: ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True) with the loopcontrols
extension, a `tojson` filter equal to json.dumps(ensure_ascii=False, sort_keys=False), and the globals
raise_exception and strftime_now. The clock behind strftime_now is pinned to FIXED_NOW (local time);
the Swift tests pin theirs to the same wall-clock time.

Usage: python3 scripts/make_chat_template_cases.py
"""
import json
import os
from datetime import datetime

import jinja2
from jinja2.exceptions import TemplateError
from jinja2.sandbox import ImmutableSandboxedEnvironment

HERE = os.path.dirname(os.path.abspath(__file__))
FIXTURES = os.path.join(HERE, "..", "Tests", "Fixtures", "chat_templates")
FIXED_NOW = datetime(2024, 7, 26, 13, 5, 9)


class RaisedByTemplate(TemplateError):
    """Only raise_exception() failures become expected errors; any other failure is a bad case."""


def make_env():
    def raise_exception(message):
        raise RaisedByTemplate(message)

    def tojson(x, ensure_ascii=False, indent=None, separators=None, sort_keys=False):
        return json.dumps(x, ensure_ascii=ensure_ascii, indent=indent, separators=separators, sort_keys=sort_keys)

    def strftime_now(fmt):
        return FIXED_NOW.strftime(fmt)

    env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True, extensions=["jinja2.ext.loopcontrols"])
    env.filters["tojson"] = tojson
    env.globals["raise_exception"] = raise_exception
    env.globals["strftime_now"] = strftime_now
    return env


ENV = make_env()


def render(source, context):
    try:
        return {"expected": ENV.from_string(source).render(**context)}
    except RaisedByTemplate as e:
        return {"expected_error": str(e)}


# ---------------------------------------------------------------- conversations

SYS = {"role": "system", "content": "You are a terse assistant."}
U1 = {"role": "user", "content": "Hello!"}
A1 = {"role": "assistant", "content": "Hi. How can I help?"}
U2 = {"role": "user", "content": "What is 2+2?"}
U_UNICODE = {"role": "user", "content": "Grüße aus Köln 🌍 — 日本語のテキスト\nsecond line\tTabbed"}
A_UNICODE = {"role": "assistant", "content": "Ça va ✓ «ok»"}
U_BRACES = {"role": "user", "content": "Template-like text: {{ name }} {% if x %} {# c #} 100% done, 50%% off, {'a': 1}"}
U_SPACES = {"role": "user", "content": "   padded with spaces and newlines \n\n"}
A_SPACES = {"role": "assistant", "content": "\n  answer  \n"}

CONVERSATIONS = {
    "single": [U1],
    "system_multi": [SYS, U1, A1, U2],
    "multi_no_system": [U1, A1, U2],
    "unicode": [U_UNICODE, A_UNICODE, U1],
    "braces": [SYS, U_BRACES],
    "spaces": [U_SPACES, A_SPACES, U2],
    "bad_alternation": [U1, U2],
    "ends_with_assistant": [SYS, U1, A1],
}

TEMPLATES = ["smollm2", "chatml", "llama3", "llama3_1", "llama3_2", "llama2", "mistral", "gemma", "qwen2_5", "phi3"]

TOOLS = [
    {
        "type": "function",
        "function": {
            "name": "get_weather",
            "description": "Get the current weather in a city",
            "parameters": {
                "type": "object",
                "properties": {
                    "city": {"type": "string", "description": "City name, e.g. Zürich"},
                    "unit": {"type": "string", "enum": ["celsius", "fahrenheit"]},
                },
                "required": ["city"],
            },
        },
    }
]
TOOL_CALL_CONVERSATION = [
    {"role": "system", "content": "Use tools when useful."},
    {"role": "user", "content": "Weather in Zürich?"},
    {
        "role": "assistant",
        "content": "",
        "tool_calls": [{"type": "function", "function": {"name": "get_weather", "arguments": {"city": "Zürich", "unit": "celsius"}}}],
    },
    {"role": "tool", "content": "{\"temperature\": 21, \"sky\": \"clear\"}"},
]


def conversation_cases():
    cases = []
    for name in TEMPLATES:
        with open(os.path.join(FIXTURES, name + ".jinja"), encoding="utf-8") as f:
            source = f.read()
        for conv_name, messages in CONVERSATIONS.items():
            for agp in (True, False):
                ctx = {"messages": messages, "add_generation_prompt": agp, "bos_token": "<s>", "eos_token": "</s>"}
                case = {"name": f"{name}/{conv_name}/agp={agp}", "template": name + ".jinja", "messages": messages,
                        "add_generation_prompt": agp, "bos_token": "<s>", "eos_token": "</s>"}
                case.update(render(source, ctx))
                cases.append(case)
        if name in ("llama3_1", "qwen2_5"):
            for extra in ({"tools": TOOLS}, {"tools": None}, {"tools": TOOLS, "tools_in_user_message": False}):
                for messages in (TOOL_CALL_CONVERSATION, [SYS, U1]):
                    ctx = {"messages": messages, "add_generation_prompt": True, "bos_token": "<s>", "eos_token": "</s>"}
                    ctx.update(extra)
                    case = {"name": f"{name}/tools/{sorted(extra)}/{len(messages)}", "template": name + ".jinja",
                            "messages": messages, "add_generation_prompt": True, "bos_token": "<s>",
                            "eos_token": "</s>", "extra_context": extra}
                    case.update(render(source, ctx))
                    cases.append(case)
        if name == "llama3_1":
            extra = {"builtin_tools": ["brave_search", "code_interpreter"], "tools": TOOLS,
                     "date_string": "01 Jan 2025"}
            messages = [SYS, U1, {"role": "assistant", "content": "", "tool_calls": [
                {"function": {"name": "brave_search", "arguments": {"query": "tern birds", "count": "3"}}}]}]
            ctx = {"messages": messages, "add_generation_prompt": False, "bos_token": "<s>", "eos_token": "</s>"}
            ctx.update(extra)
            case = {"name": "llama3_1/builtin_tools", "template": "llama3_1.jinja", "messages": messages,
                    "add_generation_prompt": False, "bos_token": "<s>", "eos_token": "</s>", "extra_context": extra}
            case.update(render(source, ctx))
            cases.append(case)
    return cases


# ---------------------------------------------------------------- expression features

MSGS = [SYS, U1, A1, U2]
EXPRESSIONS = [
    # literals and rendering of Python values
    ("{{ 'a\\'b' }}|{{ \"q\\\"x\" }}|{{ 'tab\\there\\nnl' }}|{{ '\\u00e9\\x41' }}", {}),
    ("{{ 1 }} {{ -3 }} {{ 1.5 }} {{ 2.0 }} {{ 1e-5 }} {{ 1e16 }} {{ 1/3 }} {{ 10/4 }}", {}),
    ("{{ true }} {{ False }} {{ none }} {{ None }} {{ [1, 'a', none, true, 2.5] }} {{ {'k': 'v', 'n': [1]} }}", {}),
    ("{{ (1, 2) }} {{ ('x',) }} {{ [] }} {{ {} }} {{ \"it's\" | list }}", {}),
    ("{{ 'adjacent' 'strings' }}", {}),
    # arithmetic
    ("{{ 7 // 2 }} {{ -7 // 2 }} {{ 7 % 3 }} {{ -7 % 3 }} {{ 7 % -3 }} {{ 2 ** 10 }} {{ 7.5 // 2 }} {{ 1 + 2 * 3 }}", {}),
    ("{{ 'ab' * 3 }} {{ [1] + [2, 3] }} {{ 'x' ~ 1 ~ none ~ true }} {{ (1 + 2) ~ 3 }} {{ -1 | abs }} {{ 3 - -2 }}", {}),
    ("{{ true + 1 }} {{ 5 / 2 }} {{ 4 / 2 }} {{ 0.1 + 0.2 }}", {}),
    # comparisons and logic
    ("{{ 1 < 2 < 3 }} {{ 3 > 2 > 2 }} {{ 1 == 1.0 }} {{ 'a' != 'b' }} {{ 'ab' < 'b' }} {{ [1, 2] < [1, 3] }}", {}),
    ("{{ 'b' in 'abc' }} {{ 2 in [1, 2] }} {{ 'k' in {'k': 1} }} {{ 'z' not in 'abc' }} {{ not 1 in [1] }}", {}),
    ("{{ 0 or 'x' }} {{ 1 and 'y' }} {{ '' and 'z' }} {{ none or none }}|{{ not none }} {{ not [] and 1 }}", {}),
    ("{{ 'yes' if 1 else 'no' }} {{ 'yes' if 0 else 'no' }} [{{ 'only' if false }}] {{ 1 if 0 else 2 if 1 else 3 }}", {}),
    # variables, attributes, subscripts, slices
    ("{{ messages[0].role }} {{ messages[1]['content'] }} {{ messages[-1].content }} {{ messages | length }}", {"messages": MSGS}),
    ("{% for m in messages[1:] %}{{ m.role }},{% endfor %}|{% for m in messages[:-1] %}{{ m.role[0] }}{% endfor %}|"
     "{% for m in messages[::2] %}{{ loop.index }}{% endfor %}|{{ 'abcdef'[1:4] }}{{ 'abcdef'[::-1] }}{{ 'abc'[-1] }}"
     "{{ [1,2,3,4,5][-2:] }}{{ [1,2,3,4,5][4:1:-1] }}{{ [1,2,3][5:] }}", {"messages": MSGS}),
    ("[{{ missing }}][{{ messages[10] }}][{{ messages[0].nope }}][{{ missing is defined }}]"
     "[{{ messages[0].nope is undefined }}][{{ missing | default('dflt') }}][{{ '' | default('e', true) }}]"
     "[{{ none | default('n') }}][{{ missing ~ 'x' }}][{{ missing | length }}]", {"messages": MSGS}),
    ("{{ d['items'] }}|{% for k, v in d.items() %}{{ k }}={{ v }};{% endfor %}|{{ d.keys() | list }}"
     "|{{ d.values() | list }}|{{ d.get('a') }}|{{ d.get('zz') }}|{{ d.get('zz', 'dv') }}|{{ d | length }}",
     {"d": {"a": 1, "items": "value", "b": [1, 2]}}),
    ("{% for k in d %}{{ k }}{% endfor %} {% for k, v in d | items %}{{ k }}:{{ v }} {% endfor %}{{ d | dictsort }}",
     {"d": {"b": 2, "a": 1, "C": 3}}),
    # loops
    ("{% for x in xs %}{{ loop.index }}/{{ loop.index0 }}/{{ loop.revindex }}/{{ loop.revindex0 }}/{{ loop.first }}/"
     "{{ loop.last }}/{{ loop.length }}|{% endfor %}", {"xs": ["a", "b", "c"]}),
    ("{% for x in xs %}{{ loop.previtem }}>{{ x }}<{{ loop.nextitem }} {{ loop.cycle('odd', 'even') }};{% endfor %}",
     {"xs": [1, 2, 3]}),
    ("{% for x in xs %}{{ x }}{% else %}empty{% endfor %}|{% for x in [] %}{{ x }}{% else %}none here{% endfor %}",
     {"xs": [1]}),
    ("{% for m in messages if m.role != 'system' %}{{ loop.index }}:{{ m.role }}/{{ loop.length }} {% endfor %}",
     {"messages": MSGS}),
    ("{% for i in range(5) %}{% if i == 1 %}{% continue %}{% endif %}{% if i == 4 %}{% break %}{% endif %}{{ i }}"
     "{% endfor %}|{{ range(2, 10, 3) | list }}|{{ range(3, 0, -1) | list }}", {}),
    ("{% for a, b in [[1, 2], [3, 4]] %}{{ a + b }},{% endfor %}{% for x in 'hé!' %}[{{ x }}]{% endfor %}", {}),
    ("{% for row in [[1, 2], [3]] %}{% for c in row %}{{ loop.index }}{{ c }}{% endfor %};{{ loop.index }}{% endfor %}", {}),
    # scoping and namespace
    ("{% set x = 1 %}{% for i in [1, 2] %}{% set x = x + i %}{{ x }}{% endfor %}|{{ x }}", {}),
    ("{% set ns = namespace(found=false, n=0) %}{% for m in messages %}{% if m.role == 'user' %}"
     "{% set ns.found = true %}{% set ns.n = ns.n + 1 %}{% endif %}{% endfor %}{{ ns.found }} {{ ns.n }}",
     {"messages": MSGS}),
    ("{% set a, b = 1, 2 %}{{ a }}{{ b }}{% set t = 'x', 'y' %}{{ t }}", {}),
    ("{% set block %}Captured {{ 1 + 1 }}{% endset %}[{{ block }}]", {}),
    ("{% if messages %}{% set first = messages[0] %}{% endif %}{{ first.role }}", {"messages": MSGS}),
    # macros
    ("{% macro greet(name, punct='!') %}Hello {{ name }}{{ punct }}{% endmacro %}{{ greet('A') }} {{ greet('B', '?') }} "
     "{{ greet(punct='.', name='C') }} [{{ greet() }}]", {}),
    ("{% macro show(m) -%}\n  <{{ m.role }}>\n{%- endmacro %}{% for m in messages %}{{ show(m) }}{% endfor %}",
     {"messages": MSGS}),
    # tests
    ("{{ 1 is number }} {{ 1.5 is number }} {{ true is number }} {{ 'a' is string }} {{ none is none }} {{ 1 is none }}"
     " {{ {} is mapping }} {{ [] is mapping }} {{ [] is iterable }} {{ 'x' is iterable }} {{ 3 is iterable }}"
     " {{ [] is sequence }} {{ 'a' is sequence }} {{ {} is sequence }} {{ 5 is sequence }}", {}),
    ("{{ true is true }} {{ 1 is true }} {{ false is false }} {{ 0 is false }} {{ 2 is even }} {{ 3 is odd }}"
     " {{ 4 is divisibleby 2 }} {{ 5 is divisibleby(2) }} {{ 1 is integer }} {{ 1.0 is float }} {{ true is boolean }}"
     " {{ 'a' is equalto 'a' }} {{ 2 is gt 1 }} {{ 'a' is in 'abc' }} {{ x is not defined }} {{ 1 is not string }}"
     " {{ 'abc' is lower }} {{ 'ABC' is upper }} {{ range is callable }}", {}),
    # filters
    ("[{{ '  hi  ' | trim }}][{{ 'xxhixx' | trim('x') }}][{{ 'MiXed' | upper }}][{{ 'MiXed' | lower }}]"
     "[{{ 'hello wORLD-foo(bar' | title }}][{{ 'hello world' | capitalize }}][{{ 'abc' | length }}][{{ 'héllo' | count }}]", {}),
    ("{{ [3, 1, 2] | first }} {{ [3, 1, 2] | last }} {{ 'abc' | first }} {{ [1, 2, 3] | join('-') }} {{ ['a', 'b'] | join }}"
     " {{ [1, 2] | reverse | list }} {{ 'abc' | reverse }} {{ 'a-b-a' | replace('a', 'X') }} {{ 'aaa' | replace('a', 'b', 2) }}", {}),
    ("{{ messages | map(attribute='role') | join(', ') }}|{{ messages | selectattr('role', 'equalto', 'user') | list | length }}"
     "|{{ messages | rejectattr('role', 'equalto', 'user') | map(attribute='role') | list }}"
     "|{{ messages | selectattr('role', 'in', ['system', 'assistant']) | map(attribute='content') | first }}",
     {"messages": MSGS}),
    ("{{ [1, 0, 2, none] | select | list }} {{ [1, 2, 3, 4] | select('odd') | list }} {{ [1, 2, 3, 4] | reject('even') | list }}"
     " {{ ['1', '2'] | map('int') | sum }} {{ ['a', 'b'] | map('upper') | list }}", {}),
    ("{{ '42' | int }} {{ '4.7' | int }} {{ 'x' | int }} {{ 'x' | int(7) }} {{ 3.9 | int }} {{ '2.5' | float }} {{ 5 | string }}"
     " {{ 2.5 | round }} {{ 3.14159 | round(2) }} {{ 2.1 | round(0, 'ceil') }} {{ -3 | abs }}", {}),
    ("{{ [3, 1, 2] | sort }} {{ ['b', 'A', 'c'] | sort }} {{ [3, 1, 2] | sort(reverse=true) }} {{ ['a', 'B', 'a', 'b'] | unique | list }}"
     " {{ [3, 1, 2] | min }} {{ [3, 1, 2] | max }} {{ [1, 2, 3] | sum }} {{ 'one two  three' | wordcount }}"
     " {{ users | sort(attribute='age') | map(attribute='name') | join }}",
     {"users": [{"name": "b", "age": 30}, {"name": "a", "age": 20}]}),
    ("{{ d | tojson }}|{{ d | tojson(indent=2) }}|{{ [] | tojson }}|{{ 'é\"\\n' | tojson }}|{{ none | tojson }}|{{ 1.5 | tojson }}"
     "|{{ d | tojson(sort_keys=true) }}|{{ {'x': []} | tojson(indent=4) }}",
     {"d": {"name": "tern", "list": [1, 2.0, True, None], "nested": {"ü": "ö", "e": {}}}}),
    ("{{ 'line1\\nline2\\n\\nline4' | indent(2) }}|{{ 'a\\nb' | indent(4, true) }}|{{ 'a\\n\\nb' | indent(2, blank=true) }}", {}),
    ("{{ '<a href=\"x\">&\\'' | e }} {{ '%s is %d years' | format('Tern', 3) }} {{ '%s!' % 'hi' }} {{ 'x' | safe }} {{ 'ab' | center(6) }}|", {}),
    ("{{ {'a': 1} | items | list }} {{ 'abc' | list }} {{ {'a': 1, 'b': 2} | list }}", {}),
    # string methods
    ("[{{ '  x  '.strip() }}][{{ '  x  '.lstrip() }}][{{ '  x  '.rstrip() }}][{{ 'xxyxx'.strip('x') }}]"
     "[{{ 'a,b,,c'.split(',') }}][{{ ' a  b '.split() }}][{{ 'a b c'.split(' ', 1) }}][{{ 'a-b-c'.rsplit('-', 1) }}]", {}),
    ("{{ 'hello'.startswith('he') }} {{ 'hello'.endswith('lo') }} {{ 'hello'.startswith(('x', 'h')) }}"
     " {{ 'hi there'.title() }} {{ \"they're bill's\".title() }} {{ 'ABC'.lower() }} {{ 'abc'.upper() }}"
     " {{ 'a-a'.replace('-', '+') }} {{ 'hello'.find('l') }} {{ 'hello'.count('l') }} {{ ', '.join(['a', 'b']) }}"
     " {{ 'hello world'.capitalize() }} {{ 'l1\\nl2'.splitlines() }}", {}),
    # whitespace control
    ("a  {{- ' b ' -}}  c\n  {%- if true %}  d  {% endif -%}\n  e {# comment #}  f {#- c2 -#}  g", {}),
    ("line1\n    {% if true %}\n    inside\n    {% endif %}\nline2\n  {%+ if true %}kept{% endif %}\n{% if true +%}\nx{% endif %}", {}),
    ("<ul>\n{% for x in [1, 2] %}\n  <li>{{ x }}</li>\n{% endfor %}\n</ul>\n", {}),
    ("{# only a comment #}\n{% set x = 1 %}\n\n  {{ x }}  \n{% raw %}{{ not rendered }} {% if %}{% endraw %}\ntail\n", {}),
    ("A {% raw -%}   raw   {%- endraw %} B\n   {% raw %}\n  x\n{% endraw %}\nC", {}),
    ("text with } and { and %} and #} alone\r\nCRLF line\rCR line\n", {}),
    ("{{ 'a' }}\n{{ 'b' }}\n\n", {}),
    ("{%- filter upper %}shout {{ 'this' }}{% endfilter %}", {}),
    ("{{ {'a': {'b': [1, {'c': 'deep'}]}}['a']['b'][1]['c'] }} {{ {'a': {'b': 1}} }}", {}),
    ("{{ '%.2f' | format(3.14159) }} {{ '%5s|%-5s|' % ('a', 'b') }} {{ '%d%%' % 50 }} {{ [1, 2, 3] | batch(2) | list }}"
     " [{{ messages | last | attr('content') }}] {{ 'abc' | attr('upper') is callable }}", {"messages": MSGS}),
    ("{%- if true -%}   \n\n   a   \n  {%- endif -%}  b|  {{- 'x' }}\n  {{ 'y' -}}  \n  z|"
     "a{#- x -#}  b  {#+ y +#}\n c\n    {#- z #}\nd", {}),
    ("{% for x in [1, 2] %}\n    {% if x == 1 %}\n        one\n    {% else %}\n        other\n    {% endif %}\n"
     "{% endfor %}\n", {}),
    ("{% set ns = namespace(s='') %}{% for c in 'abc' %}{% set ns.s = ns.s + c | upper %}{% endfor %}{{ ns.s }}"
     " {{ 'a,b'.split(',')[1] }} {{ 'A B'.lower().split() | join('_') }} {{ (messages | last).content }}",
     {"messages": MSGS}),
    # errors
    ("{{ raise_exception('Custom failure: ' ~ 42) }}", {}),
    ("{% if messages[0]['role'] == 'system' %}{{ raise_exception('System role not supported') }}{% endif %}", {"messages": MSGS}),
    # dates
    ("{{ strftime_now('%d %b %Y') }}|{{ strftime_now('%Y-%m-%d %H:%M:%S') }}|{{ strftime_now('%A %B %-d, %I %p, day %j') }}", {}),
]


def expression_cases():
    cases = []
    for i, (source, ctx) in enumerate(EXPRESSIONS):
        case = {"name": f"expr/{i}", "source": source, "context": ctx}
        case.update(render(source, ctx))
        cases.append(case)
    return cases


def main():
    cases = conversation_cases() + expression_cases()
    out = os.path.join(FIXTURES, "cases.json")
    with open(out, "w", encoding="utf-8") as f:
        json.dump({"jinja2_version": jinja2.__version__, "fixed_now": FIXED_NOW.isoformat(), "cases": cases},
                  f, ensure_ascii=False, indent=1)
        f.write("\n")
    errors = sum(1 for c in cases if "expected_error" in c)
    print(f"wrote {len(cases)} cases ({errors} expecting errors) to {os.path.normpath(out)}")


if __name__ == "__main__":
    main()
