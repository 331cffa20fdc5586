"""Every example workflow (UI format) references existing node types, its links connect
matching socket types, and its widget values fit the nodes' INPUT_TYPES."""

import json
import sys
import types
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent / "host"))
from comfy_support import REPO, load_pack  # noqa: E402

WORKFLOWS = sorted((REPO / "example_workflows").glob("*.json"))
FILE_LIST = "<files>"  # a combo filled from the user's model folder: any file name is fine
# ComfyUI core nodes the examples use (comfy nodes.py, v0.3.64): socket inputs, widgets, outputs.
CORE = {
    "LoadImage": ({}, [("image", FILE_LIST), ("upload", ["image"])], ["IMAGE", "MASK"]),
    "CheckpointLoaderSimple": ({}, [("ckpt_name", FILE_LIST)], ["MODEL", "CLIP", "VAE"]),
    "VAEEncode": ({"pixels": "IMAGE", "vae": "VAE"}, [], ["LATENT"]),
    "VAEDecode": ({"samples": "LATENT", "vae": "VAE"}, [], ["IMAGE"]),
    "SaveImage": ({"images": "IMAGE"}, [("filename_prefix", "STRING")], []),
    "PreviewImage": ({"images": "IMAGE"}, [], []),
}
OPTIONAL_SOCKETS: dict[str, set[str]] = {}
SOCKET_TYPES = {"IMAGE", "MASK", "LATENT", "MODEL", "VAE", "CLIP", "CONDITIONING", "LAFR", "LAFR_FACES"}


@pytest.fixture(scope="module")
def pack():
    stub = types.ModuleType("folder_paths")  # LAFR Loader lists models/lafr through ComfyUI
    stub.get_filename_list = lambda name: []
    stub.folder_names_and_paths, stub.models_dir = {}, "/nonexistent/models"
    ours = "folder_paths" not in sys.modules
    sys.modules.setdefault("folder_paths", stub)
    yield load_pack()
    if ours:  # leave no stand-in behind for tests that import the real ComfyUI
        del sys.modules["folder_paths"]


def node_spec(pack, node_type):
    """(socket inputs {name: type}, widgets [(name, spec)], output types) of a node type; optional
    sockets are in `OPTIONAL_SOCKETS[node_type]` (a workflow may leave them out or unwired)."""
    if node_type in CORE:
        return CORE[node_type]
    cls = pack.NODE_CLASS_MAPPINGS[node_type]
    sockets, widgets = {}, []
    spec = cls.INPUT_TYPES()
    for section in ("required", "optional"):
        for name, (kind, *opts) in spec.get(section, {}).items():
            if isinstance(kind, str) and kind in SOCKET_TYPES:
                sockets[name] = kind
                if section == "optional":
                    OPTIONAL_SOCKETS.setdefault(node_type, set()).add(name)
            elif name == "lafr_name":
                widgets.append((name, FILE_LIST))
            else:
                widgets.append((name, (kind, opts[0] if opts else {})))
    return sockets, widgets, list(cls.RETURN_TYPES)


def check_widget(node_type, name, spec, value):
    where = f"{node_type}.{name} = {value!r}"
    if spec == FILE_LIST:
        assert isinstance(value, str) and value, where
    elif spec == "STRING":
        assert isinstance(value, str), where
    elif isinstance(spec, list):
        assert value in spec, where
    else:
        kind, opts = spec
        if isinstance(kind, list):
            assert value in kind, f"{where} not in {kind}"
        elif kind in ("FLOAT", "INT"):
            assert isinstance(value, (int, float)) and not isinstance(value, bool), where
            assert opts.get("min", value) <= value <= opts.get("max", value), f"{where} outside [{opts.get('min')}, {opts.get('max')}]"
            if kind == "INT":
                assert float(value).is_integer(), where
        elif kind == "STRING":
            assert isinstance(value, str), where
        else:
            raise AssertionError(f"unknown widget kind {kind} for {where}")


def test_there_are_two_examples_and_they_use_the_user_facing_nodes():
    names = {p.name for p in WORKFLOWS}
    assert {"LAFR_restore_faces.json", "LAFR_three_nodes.json"} <= names
    explicit = json.loads((REPO / "example_workflows" / "LAFR_three_nodes.json").read_text())
    assert {"LAFRLatentAlign", "LAFRPrunedUNetStep", "LAFRFacePasteBack"} <= {n["type"] for n in explicit["nodes"]}


@pytest.mark.parametrize("path", WORKFLOWS, ids=lambda p: p.name)
def test_workflow_matches_node_definitions(pack, path):
    wf = json.loads(path.read_text())
    assert wf["version"] == 0.4
    nodes = {n["id"]: n for n in wf["nodes"]}
    assert wf["last_node_id"] >= max(nodes) and wf["last_link_id"] >= max(l[0] for l in wf["links"])
    specs = {}
    for node in wf["nodes"]:
        assert node["type"] in CORE or node["type"] in pack.NODE_CLASS_MAPPINGS, f"unknown node type {node['type']}"
        sockets, widgets, outputs = specs[node["id"]] = node_spec(pack, node["type"])
        values = node.get("widgets_values", [])
        assert len(values) == len(widgets), f"{node['type']}: {len(values)} widget values for {[w for w, _ in widgets]}"
        for (name, spec), value in zip(widgets, values):
            check_widget(node["type"], name, spec, value)
        optional = OPTIONAL_SOCKETS.get(node["type"], set())
        listed = [i["name"] for i in node["inputs"]]
        assert listed == [name for name in sockets if name not in optional or name in listed], f"{node['type']} inputs"
        assert [o["type"] for o in node["outputs"]] == outputs, f"{node['type']} outputs"
    for link_id, src, src_slot, dst, dst_slot, kind in wf["links"]:
        assert specs[src][2][src_slot] == kind, f"link {link_id}: source gives {specs[src][2][src_slot]}"
        dst_input = nodes[dst]["inputs"][dst_slot]
        assert dst_input["type"] == kind and dst_input["link"] == link_id, f"link {link_id} -> {nodes[dst]['type']}"
        assert link_id in (nodes[src]["outputs"][src_slot]["links"] or []), f"link {link_id} missing at its source"
    for node in wf["nodes"]:  # every required socket input is wired
        for inp in node["inputs"]:
            if inp["name"] not in OPTIONAL_SOCKETS.get(node["type"], set()):
                assert inp["link"] is not None, f"{node['type']}.{inp['name']} is not connected"
