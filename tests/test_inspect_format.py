"""`pybuild inspect -f TEMPLATE` and the Go template evaluator behind it (and behind `images`/`ps
--format`): Go's text/template semantics on inspect's JSON, docker's template functions."""

from __future__ import annotations

import json

import pytest

from pybuild.commands._gotemplate import (EMPTY_STRUCT, GoMap, GoNil, GoSlice, GoStruct, GoTemplate,
                                         TemplateExecError)
from pybuild.commands.inspect import template_view
from pybuild.errors import UsageError

DATA = {"S": "str", "I": 42, "Neg": -7, "F": 1.5, "T": True, "B": False, "N": None, "E": [], "EM": {},
        "L": ["a", None, 3], "M": {"b": 2, "a": {"x": "y"}},
        "Config": {"Env": ["A=1", "B=2"], "Cmd": ["sh", "-c", "echo hi"], "Labels": {"version": "1.2", "a.b": "x"}}}


def render(text: str, data=DATA) -> str:
    return GoTemplate(text).execute(data)


def exec_error(text: str, data=DATA) -> str:
    with pytest.raises(TemplateExecError) as info:
        render(text, data)
    return str(info.value)


# -- fields and Go's printing -----------------------------------------------------------------------

@pytest.mark.parametrize("text, expected", [
    ("{{.S}}", "str"), ("{{.T}} {{.B}}", "true false"), ("{{.I}} {{.Neg}}", "42 -7"),
    ("{{.Config.Env}}", "[A=1 B=2]"), ("{{.E}} {{.EM}}", "[] map[]"),
    ("{{.L}}", "[a <nil> 3]"),  # nil inside a list: <nil>
    ("{{.M}}", "map[a:map[x:y] b:2]"),  # maps: sorted keys
    ("{{.Config.Labels}}", "map[a.b:x version:1.2]"),
    ("{{.Nope}}", "<no value>"), ("{{.Nope.Deeper}}", "<no value>"),  # a missing map key
    ("{{.N}}", "<no value>"),  # JSON null at the top of an action: Go digs into the nil interface
    ("{{print .N}} {{print .Nope}}", "<nil> <nil>"),  # as a function's argument: nil
    ("{{.}}", None),
    ("{{.M.a.x}}", "y"), ("{{ .S }}", "str"),
    ("text only", "text only"), ("", ""),
])
def test_fields_and_printing(text, expected):
    out = render(text)
    if expected is None:  # the whole object: a map
        assert out.startswith("map[B:false Config:map[Cmd:[sh -c echo hi] ") and out.endswith(" T:true]")
    else:
        assert out == expected


@pytest.mark.parametrize("value, expected", [
    (1.5, "1.5"), (2.0, "2"), (100000.0, "100000"), (1e6, "1e+06"), (123456789.0, "1.23456789e+08"),
    (0.0001, "0.0001"), (0.00001, "1e-05"), (-0.5, "-0.5"), (1e21, "1e+21"), (float("inf"), "+Inf"),
])
def test_floats_print_as_gos_g_verb(value, expected):
    assert render("{{.X}}", {"X": value}) == expected


def test_constants():
    assert render("{{1.0}} {{0x10}} {{'a'}} {{1e3}} {{017}} {{1_000}} {{-3}} {{true}} {{\"q\\tx\"}} {{`raw\\n`}}") == \
        "1 16 97 1000 15 1000 -3 true q\tx raw\\n"


def test_typed_go_values():
    data = {"Labels": GoMap({"k": "v"}), "NoLabels": GoMap(None), "Env": GoSlice(None), "Health": GoNil("*T"),
            "Ports": GoMap({"80/tcp": {}}, "struct"),
            "Cfg": GoStruct({"Cmd": ["sh"]}, {"User": "", "Env": GoSlice(None)})}
    assert render('{{index .Labels "k"}}|{{index .Labels "nope"}}|{{index .NoLabels "x"}}|{{.Labels.nope}}', data) == \
        "v|||<no value>"  # index of a map[string]string: "" for a missing key
    assert render("{{.NoLabels}} {{.Env}} {{.Health}} {{.Ports}} {{if .Health}}y{{else}}n{{end}}", data) == \
        "map[] [] <nil> map[80/tcp:{}] n"
    assert render("{{json .NoLabels}} {{json .Env}} {{json .Health}} {{json .Ports}}", data) == \
        'null null null {"80/tcp":{}}'
    assert render("[{{.Cfg.User}}] {{.Cfg.Env}} {{.Cfg.Cmd}} {{json .Cfg}} {{.Cfg.Nope}}", data) == \
        '[] [] [sh] {"Cmd":["sh"]} <no value>'  # zeros for the struct's fields; JSON only what is set
    assert "nil pointer evaluating *T.Status" in exec_error("{{.Health.Status}}", data)
    assert render("{{range .Ports}}{{.}}{{end}}", data) == "{}" and EMPTY_STRUCT is not None


# -- functions --------------------------------------------------------------------------------------

@pytest.mark.parametrize("text, expected", [
    ("{{json .Config.Env}}", '["A=1","B=2"]'), ("{{json .S}}", '"str"'), ("{{json .M}}", '{"b":2,"a":{"x":"y"}}'),
    ("{{json .N}} {{json .Nope}} {{json .T}}", "null null true"),
    ('{{json "<&>\u2028"}}', '"<&>\\u2028"'),  # no HTML escaping (docker's SetEscapeHTML(false))
    ("{{json 1.0}} {{json 1e21}} {{json 1e-7}} {{json 0.5}}", "1 1e+21 1e-7 0.5"),
    ('{{index .Config.Labels "version"}}', "1.2"), ('{{index .Config.Labels "a.b"}}', "x"),
    ('{{index .M "nope"}}', "<no value>"),  # map[string]interface{}: the zero is a nil interface
    ('{{index .L 0}} {{index .M "a" "x"}} {{index "abc" 1}}', "a y 98"),  # a string's index: a byte
    ('{{join .Config.Cmd " "}}', "sh -c echo hi"), ('{{join (split "a,b,c" ",") "-"}}', "a-b-c"),
    ('{{split "abc" ""}} {{split "" ","}}', "[a b c] []"),
    ('{{upper .S}} {{lower "ÀB"}} {{title "hello wORLD-x_y z"}}', "STR àb Hello WORLD-X_y Z"),
    ('{{pad "x" 1 2}}|{{pad "" 1 1}}|{{truncate "abcdef" 3}}|{{truncate "ab" 3}}', " x  ||abc|ab"),
    ('{{print "a" 1 2 "b"}}', "a1 2b"),  # Sprint: a space only between two non-strings
    ('{{println "a" 1 .N}}', "a 1 <nil>\n"),
    ('{{range .Config.Env}}{{println .}}{{end}}', "A=1\nB=2\n"),
    ('{{len "héllo"}} {{len .M}} {{len .E}} {{len .Config.Env}}', "6 2 0 2"),  # len of a string: bytes
    ("{{and 1 0 2}} {{and 1 2}} {{or 0 \"\" \"x\"}} {{or 0 .Nope}} {{not .L}} {{not .E}}",
     "0 2 x <no value> false true"),
    ('{{eq .I 42}} {{eq .S "a" "str"}} {{ne .I 41}} {{eq .N nil}} {{eq .S nil}} {{eq .Nope "x"}}',
     "true true true true false false"),
    ('{{lt 1 2}} {{le 2 2}} {{gt "b" "a"}} {{ge 1.5 2.5}}', "true true true false"),
    ("{{.S | upper | lower}} {{(index .M \"a\").x}} {{.Config.Cmd | len}}", "str y 3"),
])
def test_functions(text, expected):
    assert render(text) == expected


# -- control structures and whitespace ------------------------------------------------------------

@pytest.mark.parametrize("text, expected", [
    ("{{range .L}}[{{.}}]{{end}}", "[a][<no value>][3]"),  # a nil element is dot; printed it is <no value>
    ("{{range .M}}{{.}};{{end}}", "map[x:y];2;"),  # map values in key order
    ("{{range .E}}x{{else}}empty{{end}}", "empty"), ("{{range .Nope}}x{{else}}none{{end}}", "none"),
    ("{{range 3}}{{.}}{{end}}", "012"),  # Go 1.22: range over an int
    ("{{if .T}}1{{else}}2{{end}}{{if .B}}1{{else}}2{{end}}", "12"),
    ("{{if .B}}1{{else if .I}}2{{else}}3{{end}}", "2"),
    ("{{if .E}}x{{end}}{{if .EM}}x{{end}}{{if .N}}x{{end}}{{if .Nope}}x{{end}}{{if 0}}x{{end}}{{if \"\"}}x{{end}}", ""),
    ("{{if .L}}a{{end}}{{if .M}}b{{end}}{{if -1}}c{{end}}{{if \"0\"}}d{{end}}{{if .F}}e{{end}}", "abcde"),
    ("{{with .M.a}}{{.x}}{{else}}no{{end}} {{with .Nope}}x{{else with .S}}{{.}}{{end}}", "y str"),
    ("{{range .Config.Env}}{{if eq . \"B=2\"}}{{.}}{{end}}{{end}}", "B=2"),
    ("a  {{- .S -}}  b", "astrb"), ("a {{- /* comment */ -}} b{{/* another */}}", "ab"),
    ("{{3 -}}  \n x", "3x"), ("{{- 3}}", "3"),
    ("line\n  {{- range .Config.Env}}\n  {{.}}\n{{- end}}", "line\n  A=1\n  B=2"),
])
def test_control_and_trimming(text, expected):
    assert render(text) == expected


# -- errors -----------------------------------------------------------------------------------------

@pytest.mark.parametrize("text, message", [
    ("{{.Id", "template parsing error: template: :1: unclosed action"),
    ("{{end}}", "unexpected {{end}}"), ("{{if .T}}x", "unexpected EOF"), ("{{else}}", "unexpected {{else}}"),
    ("{{foo .X}}", 'function "foo" not defined'), ("{{.A | \"x\"}}", "non executable command in pipeline stage 2"),
    ("{{}}", "missing value for command"), ("{{if}}x{{end}}", "missing value for if"),
    ("{{\"abc}}", "unterminated quoted string"), ("{{/* x }}", "unclosed comment"),
    ("{{(.A}}", "unclosed left paren"), ("{{1+2i}}", "complex numbers are not supported"),
    ("{{printf \"%s\" .X}}", "function 'printf' is not supported"),
    ("{{$x := .X}}{{$x}}", "variables"), ("{{range $i, $e := .L}}{{end}}", "variables"),
    ("{{template \"x\"}}", "{{template}} is not supported"), ("{{define \"x\"}}{{end}}", "{{define}} is not supported"),
    ("{{range .L}}{{break}}{{end}}", "{{break}} is not supported"),
    ("{{if .T}}a{{else}}b{{else}}c{{end}}", "expected end; found {{else}}"),
])
def test_parse_errors_are_usage_errors_naming_the_flag(text, message):
    with pytest.raises(UsageError) as info:
        GoTemplate(text, "--format")
    assert str(info.value).startswith(f"--format {text!r}: ") and message in str(info.value)


@pytest.mark.parametrize("text, message", [
    ("{{.S.X}}", 'template: :1:4: executing "" at <.S.X>: can\'t evaluate field X in type interface {}'),
    ("{{.N.X}}", "nil pointer evaluating interface {}.X"),
    ("{{index .L 10}}", 'at <index .L 10>: error calling index: index out of range: 10'),
    ('{{index .Nope "a"}}', "error calling index: index of untyped nil"),
    ('{{index .L "a"}}', "cannot index slice/array with type string"),
    ('{{index .M 1}}', "value has type int; should be string"),
    ("{{len .N}}", "error calling len: len of nil pointer"), ("{{len .I}}", "error calling len: len of type int"),
    ('{{eq .I "x"}}', "incompatible types for comparison: int and string"),
    ("{{eq .I 1.0}}", "incompatible types for comparison: int and float64"),
    ("{{lt true false}}", "invalid type for comparison"), ("{{eq .L .L}}", "non-comparable type"),
    ('{{join .L ","}}', "wrong type for value; expected []string; got []interface {}"),
    ("{{upper .I}}", "wrong type for value; expected string; got int"),
    ("{{upper .Nope}}", "invalid value; expected string"), ("{{upper 3}}", "expected string; found 3"),
    ('{{truncate .S "x"}}', 'expected integer; found "x"'),
    ("{{range .S}}{{end}}", "range can't iterate over str"), ("{{range .F}}{{end}}", "range can't iterate over 1.5"),
    ('{{.S "x"}}', "S is not a method but has arguments"), ('{{"a" "b"}}', 'can\'t give argument to non-function "a"'),
    ("{{nil}}", "nil is not a command"), ("{{ne 1}}", "wrong number of args for ne: want 2 got 1"),
    ("{{index}}", "wrong number of args for index: want at least 1 got 0"),
    ("{{eq 1}}", "missing argument for comparison"),
])
def test_execution_errors(text, message):
    assert message in exec_error(text)


def test_inspect_view_gives_dockers_zero_values():
    image = {"Id": "sha256:x", "RepoTags": ["a:1"], "Config": {"Cmd": ["sh"], "Labels": {"k": "v"}},
             "RootFS": {"Type": "layers", "Layers": ["sha256:l"]}}
    view = template_view(image, "image")
    assert GoTemplate('{{.Config.User}}|{{.Config.Entrypoint}}|{{index .Config.Labels "x"}}|{{.Config.Healthcheck}}|'
                      '{{.Variant}}|{{json .Config}}|{{json .}}').execute(view) == \
        '|[]||<nil>||{"Cmd":["sh"],"Labels":{"k":"v"}}|' + json.dumps(image, separators=(",", ":"))
    bare = template_view({"Id": "sha256:y", "Config": {}}, "image")
    assert GoTemplate('[{{index .Config.Labels "version"}}] {{.Config.Labels}} {{json .Config.Env}}').execute(bare) == \
        "[] map[] null"
    container = {"Id": "c1", "Args": ["-c", "true"], "State": {"Status": "exited", "ExitCode": 0},
                 "Config": {"Env": ["PATH=/bin"], "StopTimeout": None}, "HostConfig": {"PidsLimit": None}}
    view = template_view(container, "container")
    assert GoTemplate("{{.State.Health}} {{.Config.StopTimeout}} {{.HostConfig.PidsLimit}} {{.Config.Labels}} "
                      "{{json .Config.Labels}} {{join .Args \" \"}}").execute(view) == \
        "<nil> <nil> <nil> map[] {} -c true"


# -- end to end ---------------------------------------------------------------------------------------

def test_inspect_format_image(cli, tmp_path):
    (tmp_path / "Dockerfile").write_text('FROM busybox:latest\nLABEL version=1.2 "com.example.x"=y\n'
                                         'ENV A=1 B="two words"\n')
    cli("build", "-q", "-t", "app:1", str(tmp_path), check=True)
    obj = json.loads(cli("inspect", "app:1", check=True).stdout)[0]

    def fmt(template, *names):
        return cli("inspect", "-f", template, *(names or ("app:1",)))

    assert fmt("{{.Id}}").stdout == obj["Id"] + "\n"
    assert json.loads(fmt("{{json .Config.Env}}").stdout) == obj["Config"]["Env"]
    assert fmt('{{index .Config.Labels "version"}}').stdout == "1.2\n"
    assert fmt('{{index .Config.Labels "com.example.x"}}|{{index .Config.Labels "nope"}}|').stdout == "y||\n"
    env_lines = "".join(e + "\n" for e in obj["Config"]["Env"])
    assert fmt("{{range .Config.Env}}{{println .}}{{end}}").stdout == env_lines + "\n"  # + the line's own
    assert fmt('{{join .Config.Cmd " "}} [{{.Config.User}}] {{.Config.Entrypoint}} {{.Os}}/{{.Architecture}}'
               ).stdout == \
        "sh [] [] linux/amd64\n"
    assert json.loads(fmt("{{json .}}").stdout) == obj
    assert cli("inspect", "--format", "{{.Id}}", "busybox:latest", "app:1").stdout.count("\n") == 2  # one line each

    # one name missing: the others still print, exit 1, docker's message; docker prints "\n" if none printed
    base = json.loads(cli("inspect", "busybox:latest", check=True).stdout)[0]["Id"]
    res = fmt("{{.Id}}", "app:1", "nope", "busybox:latest")
    assert res.code == 1 and res.stdout == f"{obj['Id']}\n{base}\n" and "ERROR: No such object: nope" in res.stderr
    res = fmt("{{.Id}}", "nope")
    assert (res.code, res.stdout) == (1, "\n")
    # an execution error: that object fails (exit 1), the others print
    res = fmt("{{.Id}} {{.Config.Healthcheck.Test}}", "app:1", "busybox:latest")
    assert res.code == 1 and res.stdout == "\n" and res.stderr.count("nil pointer evaluating") == 2
    # a bad or unsupported template: a usage error before any output
    for bad in ("{{.Id", "{{printf \"%s\" .Id}}", "{{$x := .Id}}"):
        res = fmt(bad)
        assert res.code == 2 and res.stdout == "" and "--format" in res.stderr
    # -f json and --type
    assert json.loads(fmt("json").stdout) == [obj]
    res = cli("inspect", "--type", "container", "app:1")
    assert res.code == 1 and "No such container: app:1" in res.stderr and json.loads(res.stdout) == []
    # no -f: unchanged
    assert json.loads(cli("inspect", "app:1", check=True).stdout) == [obj]


def test_inspect_format_container(cli):
    cli("run", "--name", "c", "--network", "none", "busybox:latest", "true", check=True)
    cli("run", "--name", "c3", "--network", "none", "busybox:latest", "sh", "-c", "exit 3")
    try:
        res = cli("inspect", "-f", "{{.State.Status}} {{.State.ExitCode}}", "c", "c3", check=True)
        assert res.stdout == "exited 0\nexited 3\n"
        out = cli("inspect", "-f", "{{.Name}} [{{.NetworkSettings.IPAddress}}] {{.State.Running}} {{.State.Health}} "
                                   "{{.HostConfig.NetworkMode}} {{json .Config.Cmd}}", "c", check=True).stdout
        assert out == '/c [] false <nil> none ["true"]\n'
        cid = json.loads(cli("inspect", "c", check=True).stdout)[0]["Id"]
        assert cli("inspect", "--type", "container", "-f", "{{.Id}}", "c", check=True).stdout == cid + "\n"
        res = cli("inspect", "--type", "image", "-f", "{{.Id}}", "c")
        assert res.code == 1 and "No such image: c" in res.stderr
        res = cli("inspect", "-f", "{{if eq .State.Status \"exited\"}}done{{end}}", "c", "busybox:latest")
        # an image has no State: as docker (missingkey=error), that object fails, the others print
        assert res.code == 1 and res.stdout == "done\n", res.output
        assert 'busybox:latest: template: :1:14: executing "" at <.State.Status>: map has no entry for key "State"' \
            in res.stderr
        res = cli("inspect", "-f", "{{.Nope}}", "c")  # a typo in a CI script's template must not pass
        assert res.code == 1 and 'map has no entry for key "Nope"' in res.stderr and res.stdout.strip() == ""
    finally:
        cli("rm", "-f", "c", "c3")
