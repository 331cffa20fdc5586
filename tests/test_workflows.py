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
    "CLIPTextEncode": ({"clip": "CLIP"}, [("text", "STRING")], ["CONDITIONING"]),
    "UNETLoader": ({}, [("unet_name", FILE_LIST), ("weight_dtype", ["default", "fp8_e4m3fn", "fp8_e4m3fn_fast", "fp8_e5m2"])], ["MODEL"]),
    "VAELoader": ({}, [("vae_name", FILE_LIST)], ["VAE"]),
    "VAEEncode": ({"pixels": "IMAGE", "vae": "VAE"}, [], ["LATENT"]),
    "VAEDecode": ({"samples": "LATENT", "vae": "VAE"}, [], ["IMAGE"]),
    "SaveImage": ({"images": "IMAGE"}, [("filename_prefix", "STRING")], []),
    "PreviewImage": ({"images": "IMAGE"}, [], []),
    # comfy_extras/nodes_video.py (the video example: a clip in, a clip out, its fps and audio kept)
    "LoadVideo": ({}, [("file", FILE_LIST), ("upload", ["image"])], ["VIDEO"]),
    "GetVideoComponents": ({"video": "VIDEO"}, [], ["IMAGE", "AUDIO", "FLOAT"]),
    "CreateVideo": ({"images": "IMAGE", "audio": "AUDIO"}, [("fps", ("FLOAT", {"min": 1.0, "max": 120.0}))], ["VIDEO"]),
    "SaveVideo": ({"video": "VIDEO"}, [("filename_prefix", "STRING"), ("format", ["auto", "mp4"]), ("codec", ["auto", "h264"])], []),
}
OPTIONAL_SOCKETS: dict[str, set[str]] = {"CreateVideo": {"audio"}}
OPTIONAL_WIDGETS: dict[str, set[str]] = {}  # a workflow saved before they existed leaves them out (at the end)
SOCKET_TYPES = {"IMAGE", "MASK", "LATENT", "MODEL", "VAE", "CLIP", "CONDITIONING", "LAFR", "LAFR_FACES", "INTERLCM", "VIDEO", "AUDIO"}
FILE_WIDGETS = {"lafr_name", "interlcm_name", "lcm_checkpoint", "clip_vision_name"}  # combos of the user's model folders
# the frontend adds a value-control widget after an INT with control_after_generate (its value is
# saved in the workflow, never sent in the API prompt)
CONTROL_AFTER_GENERATE = ("control_after_generate", (["fixed", "increment", "decrement", "randomize"], {}))


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
            elif name in FILE_WIDGETS:
                widgets.append((name, FILE_LIST))
            else:
                widgets.append((name, (kind, opts[0] if opts else {})))
                if opts and opts[0].get("control_after_generate"):
                    widgets.append(CONTROL_AFTER_GENERATE)
            if section == "optional" and not (isinstance(kind, str) and kind in SOCKET_TYPES):
                OPTIONAL_WIDGETS.setdefault(node_type, set()).add(name)
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
        elif kind == "BOOLEAN":
            assert isinstance(value, bool), where
        else:
            raise AssertionError(f"unknown widget kind {kind} for {where}")


def test_there_are_three_examples_and_they_use_the_user_facing_nodes():
    names = {p.name for p in WORKFLOWS}
    assert {"LAFR_restore_faces.json", "LAFR_three_nodes.json", "LAFR_osediff_face.json"} <= names
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
        left_out = [w for w, _ in widgets[len(values):]]
        assert len(values) <= len(widgets) and set(left_out) <= OPTIONAL_WIDGETS.get(node["type"], set()), (
            f"{node['type']}: {len(values)} widget values for {[w for w, _ in widgets]}")
        for (name, spec), value in zip(widgets, values):
            check_widget(node["type"], name, spec, value)
        kinds = {name: spec[0] if isinstance(spec, tuple) else spec for name, spec in widgets}
        for inp in node["inputs"]:  # a widget fed by a link (CreateVideo's fps from the source video)
            if "widget" in inp:
                assert inp["widget"]["name"] == inp["name"] and kinds.get(inp["name"]) == inp["type"], f"{node['type']}.{inp['name']}"
        optional = OPTIONAL_SOCKETS.get(node["type"], set())
        listed = [i["name"] for i in node["inputs"] if "widget" not in i]
        assert listed == [name for name in sockets if name not in optional or name in listed], f"{node['type']} inputs"
        assert [o["type"] for o in node["outputs"]] == outputs, f"{node['type']} outputs"
    for link_id, src, src_slot, dst, dst_slot, kind in wf["links"]:
        assert specs[src][2][src_slot] == kind, f"link {link_id}: source gives {specs[src][2][src_slot]}"
        dst_input = nodes[dst]["inputs"][dst_slot]
        assert dst_input["type"] == kind and dst_input["link"] == link_id, f"link {link_id} -> {nodes[dst]['type']}"
        assert link_id in (nodes[src]["outputs"][src_slot]["links"] or []), f"link {link_id} missing at its source"
    for node in wf["nodes"]:  # every required socket input is wired
        for inp in node["inputs"]:
            if inp["name"] not in OPTIONAL_SOCKETS.get(node["type"], set()) and "widget" not in inp:
                assert inp["link"] is not None, f"{node['type']}.{inp['name']} is not connected"


def test_osediff_example_feeds_its_checkpoints_clip_text_to_restore_faces_with_adain(pack):
    """OSEDiff-face: the prompt is the user's text through the SD2.1 checkpoint's own CLIP, and the
    colour fix is OSEDiff's default (adain)."""
    wf = json.loads((REPO / "example_workflows" / "LAFR_osediff_face.json").read_text())
    nodes = {n["id"]: n for n in wf["nodes"]}
    links = {l[0]: l for l in wf["links"]}

    def source(node, name):
        link = next(i["link"] for i in node["inputs"] if i["name"] == name)
        return nodes[links[link][1]], links[link][2]

    restore = next(n for n in wf["nodes"] if n["type"] == "LAFRRestoreFaces")
    encoder, _ = source(restore, "conditioning")
    assert encoder["type"] == "CLIPTextEncode" and "face" in encoder["widgets_values"][0]
    checkpoint, slot = source(encoder, "clip")
    assert checkpoint["type"] == "CheckpointLoaderSimple" and slot == 1  # its CLIP output
    assert source(restore, "model") == (checkpoint, 0) and source(restore, "vae") == (checkpoint, 2)
    loader, _ = source(restore, "lafr")
    assert loader["widgets_values"] == ["osediff_face.safetensors"]
    widget_names = [name for name, _ in node_spec(pack, "LAFRRestoreFaces")[1]]
    assert restore["widgets_values"][widget_names.index("colour_correction")] == "adain"
    assert any(n["type"] == "SaveImage" and source(n, "images")[0] is restore for n in wf["nodes"])


def test_interlcm_example_wires_the_lcm_unet_its_vae_and_the_loader_into_restore_faces(pack):
    """InterLCM on LCM Dreamshaper v7 loaded by core loaders; the loader names the same UNet file
    (its guidance weight); the 3-step weights with the file's colour fix (wavelet)."""
    wf = json.loads((REPO / "example_workflows" / "LAFR_interlcm.json").read_text())
    nodes = {n["id"]: n for n in wf["nodes"]}
    links = {l[0]: l for l in wf["links"]}
    restore = next(n for n in wf["nodes"] if n["type"] == "InterLCMRestoreFaces")
    source = {i["name"]: nodes[links[i["link"]][1]] for i in restore["inputs"]}
    assert source["model"]["type"] == "UNETLoader" and source["vae"]["type"] == "VAELoader"
    loader = source["interlcm"]
    assert loader["type"] == "InterLCMLoader"
    assert loader["widgets_values"][1] == source["model"]["widgets_values"][0], "the guidance weight comes from the MODEL's file"
    values = dict(zip([name for name, _ in node_spec(pack, "InterLCMRestoreFaces")[1]], restore["widgets_values"]))
    assert values["colour_correction"] == "file default" and values["control_after_generate"] == "fixed"
    assert any(n["type"] == "SaveImage" and nodes[links[n["inputs"][0]["link"]][1]] is restore for n in wf["nodes"])


def test_video_example_runs_the_clip_in_temporal_mode_with_core_nodes_only(pack):
    wf = json.loads((REPO / "example_workflows" / "LAFR_video_frames.json").read_text())
    used = {n["type"] for n in wf["nodes"]}
    assert used - set(pack.NODE_CLASS_MAPPINGS) <= set(CORE), "only ComfyUI core nodes besides ours"
    assert {"LoadVideo", "GetVideoComponents", "LAFRRestoreFaces", "CreateVideo", "SaveVideo"} <= used
    node = next(n for n in wf["nodes"] if n["type"] == "LAFRRestoreFaces")
    _, widgets, _ = node_spec(pack, "LAFRRestoreFaces")
    values = dict(zip([name for name, _ in widgets], node["widgets_values"]))
    assert values["temporal"] is True and values["temporal_sigma"] > 0
    create = next(n for n in wf["nodes"] if n["type"] == "CreateVideo")
    assert all(i["link"] is not None for i in create["inputs"]), "the output keeps the source's frame rate and audio"


@pytest.mark.parametrize("node_type", ["LAFRFaceDetectAlign", "LAFRRestoreFaces"])
def test_video_inputs_are_optional_and_come_after_the_old_widgets(pack, node_type):
    """A workflow saved before video support lists only the old widget values, in order: the new
    inputs must be optional (API prompts without them validate) and last (the old values keep
    their names); tests/test_video_nodes.py runs the nodes without them."""
    spec = pack.NODE_CLASS_MAPPINGS[node_type].INPUT_TYPES()
    new = ["temporal", "temporal_sigma", "max_gap"]
    assert not set(new) & set(spec["required"]) and set(new) <= set(spec["optional"])
    _, widgets, _ = node_spec(pack, node_type)
    assert [name for name, _ in widgets][-3:] == new
    assert spec["optional"]["temporal"][1]["default"] is False
