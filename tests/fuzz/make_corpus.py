#!/usr/bin/python3
"""Writes the fuzz targets' seed corpora and the request dictionary (deterministic; the
outputs are committed, rerun after changing the seeds):

  corpus/request/*.mp   requests (msgpack), several in one input separated by 0xc1
  corpus/yaml/*.yaml    providers files and config files
  corpus/clone/*.mp     a snapshot reply, then events (msgpack), separated by 0xc1
  request.dict          libFuzzer dictionary: op names, argument names, envelope keys
  yaml.dict             libFuzzer dictionary: the files' keys and YAML syntax
  clone.dict            libFuzzer dictionary: snapshot and event keys

Needs Debian's python3-msgpack.
"""

import os

import msgpack

HERE = os.path.dirname(os.path.abspath(__file__))
SEP = b"\xc1"


def pack(obj):
    return msgpack.packb(obj, use_bin_type=True)


def req(op, args=None, id=None):
    msg = {"op": op}
    if args is not None:
        msg["args"] = args
    if id is not None:
        msg["id"] = id
    return pack(msg)


ACME = {"provider": "acme", "name": "Acme", "base_api_url": "http://127.0.0.1:9/v1",
        "api_key": "sk-fuzz-0001", "valid_models": {"m-1": "one", "m-2": "m-2",
                                                     "org/model-3": "three"},
        "invalid_models": ["bad-1"]}

REQUESTS = {
    "get": req("get", {"provider_name": "openai"}),
    "get_provider_config": req("get_provider_config", {"provider_name": "acme"}, id=7),
    "getitem": req("getitem", {"provider_name": "nope"}, id="x"),
    "contains": req("contains", {"provider_name": "groq"}),
    "keys": req("keys"),
    "get_all_provider_names": req("get_all_provider_names", {}, id=[1, 2]),
    "values": req("values"),
    "items": req("items", id=None),
    "merged_models": req("merged_models"),
    "valid_scoped_models": req("valid_scoped_models"),
    "resolve": req("get_api_for_model_string", {"model_string": "acme/one"}),
    "resolve_slash": req("get_api_for_model_string", {"model_string": "org/model-3"}),
    "validate": req("validate_model", {"model_string": "openai/gpt-4o"}, id=3.5),
    "available": req("get_available_models", {"filter_by_provider": "acme"}),
    "available_nil": req("get_available_models", {"filter_by_provider": None}),
    "short_name": req("get_short_name", {"long_name": "m-1"}),
    "find_model": req("find_model", {"name": "one"}),
    "health": req("health", id=True),
    "job_status": req("job_status", {"job": "job-1"}),
    "persist": req("persist_provider_configs"),
    "discover_one": req("discover_models", {"provider": "acme", "force_refresh": True,
                                            "persist_on_success": False}),
    "set_provider": req("set_provider", ACME, id=1),
    "set_provider_nil_key": req("set_provider", dict(ACME, api_key=None)),
    "remove_provider": req("remove_provider", {"provider": "acme"}),
    "remove_pinned": req("remove_provider", {"provider": "openai"}),
    "set_short_name": req("set_short_name", {"provider": "acme", "long_name": "m-1",
                                             "short_name": "uno"}),
    # sequences: state built by one request and used by the next
    "seq_write_read": SEP.join([
        req("set_provider", ACME),
        req("set_short_name", {"provider": "acme", "long_name": "m-2", "short_name": "two"}),
        req("get_api_for_model_string", {"model_string": "two"}),
        req("valid_scoped_models"),
        req("remove_provider", {"provider": "acme"}),
    ]),
    "seq_update": SEP.join([
        req("set_provider", {"provider": "b.x-1", "name": "B", "base_api_url": "https://b/v1"}),
        req("set_provider", {"provider": "b.x-1", "name": "B2", "base_api_url": "https://b/v1",
                             "valid_models": {"a": None, "b": "bb"}}),
        req("find_model", {"name": "bb"}),
        req("merged_models"),
    ]),
    # bad input
    "not_msgpack": b"\xc1\xc1garbage",
    "not_a_map": pack([1, 2, 3]),
    "no_op": pack({"args": {}}),
    "op_not_str": pack({"op": 5}),
    "args_not_map": pack({"op": "get", "args": [1]}),
    "unknown_op": req("no_such_op", id=9),
    "wrong_types": req("set_provider", {"provider": 1, "name": [], "base_api_url": {},
                                        "valid_models": [1], "invalid_models": {"a": 1}}),
    "bin_string": pack({"op": b"get", "args": {"provider_name": b"openai"}}),
    "deep": pack({"op": "get", "args": {"provider_name": [[[[[[[[[[[[[[[[["x"]]]]]]]]]]]]]]]]]}}),
    "trailing": req("health") + b"\x00",
    "lying_length": b"\x81\xa2op\xdb\xff\xff\xff\xffhealth",
    "empty": b"",
}

YAML = {
    "store_seed": """providers:
  acme:
    name: Acme
    base_api_url: http://127.0.0.1:9/v1
    api_key: sk-fuzz-0001
    valid_models:
      m-1: one
      org/model-3: three
    invalid_models: [bad-1, bad-2]
  openai:
    name: OpenAI
    base_api_url: https://api.openai.com/v1
    api_key: null
    valid_models: {gpt-4o: 4o}
""",
    "store_empty_models": """providers:
  x:
    name: X
    base_api_url: https://x.test/v1
    api_key: ~
    valid_models: {}
""",
    "store_quoted": """providers:
  "q.1":
    name: 'Quoted: name'
    base_api_url: "https://q.test/v1"
    api_key: "sk-\\u00e9\\t"
    valid_models:
      "a: b": "c # d"
      ? complex
      : value
    invalid_models: []
""",
    "config_full": """endpoint: tcp://127.0.0.1:5555
events_endpoint: tcp://127.0.0.1:5556
data_dir: /var/lib/provider-manager
workers: 4
log_level: info
discovery:
  cache_duration: 3600
  max_tokens: 16
  per_provider_limit: 4
  connect_timeout_ms: 5000
  request_timeout_ms: 30000
  max_retries: 3
  retry_budget_ms: 30000
  interval_minutes: 0
  on_start: false
  list_max_bytes: 16777216
  probe_max_bytes: 65536
security:
  curve_secret_key_file: /run/secrets/pm-server.key
  curve_clients_dir: /run/secrets/pm-clients
  allow_insecure: false
providers:
  openai:
    valid_models:
      gpt-4o: 4o
  my-local:
    name: My local vLLM
    base_api_url: http://10.0.0.5:8000/v1
""",
    "anchors": """providers:
  a: &p
    name: A
    base_api_url: http://a/v1
  b: *p
""",
    "two_docs": "providers: {}\n---\nproviders: {}\n",
    "tags": "providers: !!map\n  t:\n    name: !!str 12\n    base_api_url: !custom http://t\n",
    "flow": "{providers: {f: {name: F, base_api_url: 'http://f/v1', valid_models: {x: y}}}}\n",
    "nested": "providers:\n  n:\n    name: [[[[[[[[[[[[[[[[[[x]]]]]]]]]]]]]]]]]]\n",
    "unknown_keys": "colour: blue\nproviders:\n  u:\n    name: U\n    base_api_url: http://u\n"
                    "    extra: 1\n",
    "empty": "",
    "null_providers": "providers:\n",
    "bad_indent": "providers:\n  a:\n   name: x\n  base_api_url: y\n",
}

def snap(version, providers, epoch="e1"):
    return pack({"id": 1, "ok": True, "result": {"state_version": version, "status_version": 1,
                                                 "epoch": epoch, "providers": providers}})


def changed(version, keys, configs, epoch="e1"):
    return pack({"event": "changed", "providers": keys, "configs": configs,
                 "state_version": version, "epoch": epoch, "by": "admin"})


def beat(version, epoch="e1"):
    return pack({"event": "heartbeat", "state_version": version, "status_version": 1,
                 "epoch": epoch})


ACME2 = dict(ACME, valid_models={"m-9": "nine"}, api_key=None)
BETA = {"provider": "beta", "name": "Beta", "base_api_url": "https://beta/v1", "api_key": None,
        "valid_models": {}, "invalid_models": []}
CLONE = {
    "apply": SEP.join([snap(3, [ACME]), changed(4, ["beta"], [BETA]),
                       changed(5, ["acme"], [ACME2]), beat(5)]),
    "remove": SEP.join([snap(7, [ACME, BETA]), changed(8, ["acme"], [None]), beat(8)]),
    "gap": SEP.join([snap(3, [ACME]), changed(6, ["beta"], [BETA]), snap(6, [ACME, BETA])]),
    "epoch": SEP.join([snap(3, [ACME]), beat(1, "e2"), snap(1, [BETA], "e2")]),
    "ahead": SEP.join([snap(3, [ACME]), beat(9), snap(9, [])]),
    "wrong_key": SEP.join([snap(3, [ACME]), changed(4, ["beta"], [ACME])]),
    "models_event": SEP.join([snap(3, [ACME]), pack({"event": "models", "provider": "acme",
                                                     "models": [], "status_version": 2})]),
    "error_reply": pack({"id": 1, "ok": False, "error": {"code": "unavailable",
                                                          "message": "x"}}),
}

CLONE_WORDS = ["id", "ok", "result", "state_version", "status_version", "epoch", "providers",
               "configs", "event", "changed", "heartbeat", "models", "by", "provider", "name",
               "base_api_url", "api_key", "valid_models", "invalid_models", "acme", "beta"]

DICT_WORDS = ["op", "args", "id", "provider_name", "model_string", "filter_by_provider",
              "long_name", "short_name", "name", "provider", "base_api_url", "api_key",
              "valid_models", "invalid_models", "force_refresh", "persist_on_success", "job",
              "get", "get_provider_config", "getitem", "contains", "keys",
              "get_all_provider_names", "values", "items", "merged_models",
              "valid_scoped_models", "get_api_for_model_string", "validate_model",
              "get_available_models", "get_short_name", "find_model", "discover_models",
              "job_status", "persist_provider_configs", "set_provider", "remove_provider",
              "set_short_name", "health", "openai", "http://", "https://"]


YAML_WORDS = ["providers:", "name:", "base_api_url:", "api_key:", "valid_models:",
              "invalid_models:", "endpoint:", "events_endpoint:", "data_dir:", "workers:",
              "log_level:", "discovery:", "security:", "cache_duration:", "max_tokens:",
              "per_provider_limit:", "connect_timeout_ms:", "request_timeout_ms:",
              "max_retries:", "retry_budget_ms:", "interval_minutes:", "on_start:",
              "list_max_bytes:", "probe_max_bytes:", "curve_secret_key_file:",
              "curve_clients_dir:", "allow_insecure:", "null", "~", "true", "false", "---",
              "...", "&a ", "*a", "!!str ", "!!map", "!!null", "? ", ": ", "- ", "{", "}", "[",
              "]", "'", "\"", "|\n", ">\n", "#", "%YAML 1.1\n", "%TAG ! tag:x,2000:\n",
              "\n  ", "\n    ", "http://", "https://", "\\u00e9", "\t", "\r\n", "\ufeff"]


def dict_line(data):
    return '"%s"' % "".join(chr(b) if 0x20 <= b < 0x7f and b not in (0x22, 0x5c)
                            else "\\x%02x" % b for b in data)


def main():
    req_dir = os.path.join(HERE, "corpus", "request")
    yaml_dir = os.path.join(HERE, "corpus", "yaml")
    clone_dir = os.path.join(HERE, "corpus", "clone")
    for d in (req_dir, yaml_dir, clone_dir):
        os.makedirs(d, exist_ok=True)
    for name, data in sorted(REQUESTS.items()):
        with open(os.path.join(req_dir, name + ".mp"), "wb") as f:
            f.write(data)
    for name, text in sorted(YAML.items()):
        with open(os.path.join(yaml_dir, name + ".yaml"), "w", encoding="utf-8") as f:
            f.write(text)
    lines = ["# libFuzzer dictionary for fuzz_request (written by make_corpus.py)"]
    for word in DICT_WORDS:
        lines.append(dict_line(pack(word)))
    lines.append(dict_line(SEP))
    with open(os.path.join(HERE, "request.dict"), "w", encoding="utf-8") as f:
        f.write("\n".join(lines) + "\n")
    for name, data in sorted(CLONE.items()):
        with open(os.path.join(clone_dir, name + ".mp"), "wb") as f:
            f.write(data)
    lines = ["# libFuzzer dictionary for fuzz_clone (written by make_corpus.py)"]
    lines += [dict_line(pack(word)) for word in CLONE_WORDS]
    lines.append(dict_line(SEP))
    with open(os.path.join(HERE, "clone.dict"), "w", encoding="utf-8") as f:
        f.write("\n".join(lines) + "\n")
    lines = ["# libFuzzer dictionary for fuzz_yaml (written by make_corpus.py)"]
    lines += [dict_line(w.encode("utf-8")) for w in YAML_WORDS]
    with open(os.path.join(HERE, "yaml.dict"), "w", encoding="utf-8") as f:
        f.write("\n".join(lines) + "\n")
    print("wrote %d request seeds, %d yaml seeds, %d clone seeds, request.dict, yaml.dict, "
          "clone.dict" % (len(REQUESTS), len(YAML), len(CLONE)))


if __name__ == "__main__":
    main()
