// node --test tests/web : the pure drawing logic of web/lafr_view.js
import { test } from "node:test";
import assert from "node:assert/strict";
import {
  clampFraction, clipForSplit, drawIdentity, drawOverlay, faceCountCaption, fitRect, ID_COLOUR, ID_FAR_COLOUR, identityCaption,
  identityFor, identityLabel, identityShapes, overlayShapes, splitFromPointer, splitPairs, viewPath,
} from "../../web/lafr_view.js";

test("fitRect letterboxes a wide image and pillarboxes a tall one", () => {
  assert.deepEqual(fitRect(200, 100, 100, 100), { x: 0, y: 25, w: 100, h: 50 });
  assert.deepEqual(fitRect(100, 200, 100, 100), { x: 25, y: 0, w: 50, h: 100 });
  assert.deepEqual(fitRect(0, 10, 100, 100), { x: 0, y: 0, w: 0, h: 0 });
});

test("split follows the pointer and is clamped", () => {
  assert.equal(splitFromPointer(150, 100, 200), 0.25);
  assert.equal(splitFromPointer(50, 100, 200), 0);
  assert.equal(splitFromPointer(400, 100, 200), 1);
  assert.equal(splitFromPointer(10, 0, 0), 0.5);
  assert.equal(clampFraction(Number.NaN), 0.5);
  assert.equal(clipForSplit(0.25), "inset(0 0 0 25.00%)");
  assert.equal(clipForSplit(2), "inset(0 0 0 100.00%)");
});

test("viewPath encodes the record for /view", () => {
  assert.equal(viewPath({ filename: "a b.png", subfolder: "", type: "temp" }), "/view?filename=a+b.png&type=temp&subfolder=");
});

test("splitPairs pairs before and after and tolerates missing output", () => {
  const pairs = splitPairs({ lafr_before: [{ filename: "b0" }, { filename: "b1" }], lafr_after: [{ filename: "a0" }] });
  assert.deepEqual(pairs, [{ before: { filename: "b0" }, after: { filename: "a0" } }]);
  assert.deepEqual(splitPairs(undefined), []);
});

test("overlayShapes maps boxes and landmarks into the drawn rectangle", () => {
  const overlay = {
    width: 200, height: 100, skipped_small: 1,
    faces: [{ box: [20, 10, 60, 50], score: 0.987, landmarks: [[30, 20], [50, 20], [40, 30], [32, 40], [48, 40]] }],
  };
  const shapes = overlayShapes(overlay, { x: 10, y: 5, w: 100, h: 50 });
  assert.equal(shapes.faces.length, 1);
  assert.deepEqual(shapes.faces[0].box, { x: 20, y: 10, w: 20, h: 20 });
  assert.deepEqual(shapes.faces[0].landmarks[0], { x: 25, y: 15 });
  assert.equal(shapes.faces[0].label, "0: 0.99");
  assert.equal(shapes.caption, "1 face (1 too small)");
});

test("faceCountCaption says when nothing was found", () => {
  assert.equal(faceCountCaption(0), "no face found");
  assert.equal(faceCountCaption(3), "3 faces");
});

function recordingContext() {
  const calls = [];
  const ctx = new Proxy({}, {
    get: (_, name) => (...args) => calls.push([name, ...args]),
    set: (_, name, value) => calls.push([`=${String(name)}`, value]) > 0,
  });
  return { ctx, calls };
}

// what nodes/ui_preview.py sends for a two-image batch with dlib installed (one record per before/after pair)
const DLIB_OUTPUT = {
  lafr_before: [{ filename: "b0" }, { filename: "b1" }],
  lafr_after: [{ filename: "a0" }, { filename: "a1" }],
  lafr_identity: [
    { width: 400, height: 200, model: "dlib ResNet descriptor", legend: "same person < 0.6", threshold: 0.6,
      faces: [{ index: 0, box: [40, 20, 120, 100], distance: 0.2134 }, { index: 1, box: [200, 40, 260, 100], distance: 0.6 }] },
    { width: 400, height: 200, model: "dlib ResNet descriptor", legend: "same person < 0.6", threshold: 0.6, faces: [] },
  ],
};

test("identityFor gives a pair's record only when it has measured faces", () => {
  assert.equal(identityFor(DLIB_OUTPUT, 0), DLIB_OUTPUT.lafr_identity[0]);
  assert.equal(identityFor(DLIB_OUTPUT, 1), null); // an image without a face
  assert.equal(identityFor({ lafr_before: [], lafr_after: [] }), null); // no identity model on the server
  assert.equal(identityFor(undefined), null);
});

test("identityShapes places each face's distance and flags those not under the threshold", () => {
  const shapes = identityShapes(DLIB_OUTPUT.lafr_identity[0], { x: 10, y: 5, w: 200, h: 100 }); // drawn at half size
  assert.deepEqual(shapes.faces.map((f) => f.box), [{ x: 30, y: 15, w: 40, h: 40 }, { x: 110, y: 25, w: 30, h: 30 }]);
  assert.deepEqual(shapes.faces.map((f) => f.label), ["ID 0.21", "ID 0.60"]);
  assert.deepEqual(shapes.faces.map((f) => [f.far, f.colour]), [[false, ID_COLOUR], [true, ID_FAR_COLOUR]]); // 0.6 is not < 0.6
  assert.equal(shapes.caption, "ID input->output: dlib ResNet descriptor, same person < 0.6");
});

test("an ArcFace record (degrees, no threshold) flags nothing and drops non-numbers", () => {
  const record = { width: 100, height: 100, model: "ArcFace w600k_r50.onnx", legend: "angle in degrees", threshold: null,
    faces: [{ index: 0, box: [0, 0, 50, 50], distance: 73.25 }, { index: 1, box: [50, 50, 90, 90], distance: null }] };
  const shapes = identityShapes(record, { x: 0, y: 0, w: 100, h: 100 });
  assert.deepEqual(shapes.faces.map((f) => [f.label, f.far]), [["ID 73.3", false]]);
  assert.equal(identityLabel(0), "ID 0.00");
  assert.equal(identityCaption(record), "ID input->output: ArcFace w600k_r50.onnx, angle in degrees");
});

test("drawIdentity strokes one box per face in its colour and writes the labels and the caption", () => {
  const { ctx, calls } = recordingContext();
  drawIdentity(ctx, identityShapes(DLIB_OUTPUT.lafr_identity[0], { x: 0, y: 0, w: 400, h: 200 }), 200);
  assert.deepEqual(calls.filter(([n]) => n === "strokeRect").map((c) => c.slice(1)), [[40, 20, 80, 80], [200, 40, 60, 60]]);
  assert.deepEqual(calls.filter(([n]) => n === "=strokeStyle").map((c) => c[1]), [ID_COLOUR, ID_FAR_COLOUR]);
  const texts = calls.filter(([n]) => n === "fillText");
  assert.deepEqual(texts.map((c) => c[1]), ["ID 0.21", "ID 0.60", "ID input->output: dlib ResNet descriptor, same person < 0.6"]);
  assert.deepEqual(texts[0].slice(2), [42, 114]); // under its box
  assert.deepEqual(texts[2].slice(2), [6, 194]); // caption at the bottom
});

test("drawOverlay strokes one box and one dot per landmark", () => {
  const { ctx, calls } = recordingContext();
  const shapes = overlayShapes(
    { width: 100, height: 100, faces: [{ box: [0, 0, 10, 10], score: 1, landmarks: [[1, 1], [2, 2], [3, 3], [4, 4], [5, 5]] }] },
    { x: 0, y: 0, w: 100, h: 100 },
  );
  drawOverlay(ctx, shapes);
  assert.equal(calls.filter(([n]) => n === "strokeRect").length, 1);
  assert.equal(calls.filter(([n]) => n === "arc").length, 5);
  assert.deepEqual(calls.filter(([n]) => n === "fillText").map((c) => c[1]), ["0: 1.00", "1 face"]);
});
