// node --test tests/web : the pure drawing logic of web/lafr_view.js
import { test } from "node:test";
import assert from "node:assert/strict";
import {
  clampFraction, clipForSplit, drawOverlay, faceCountCaption, fitRect, overlayShapes,
  splitFromPointer, splitPairs, viewPath,
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

test("drawOverlay strokes one box and one dot per landmark", () => {
  const calls = [];
  const ctx = new Proxy({}, {
    get: (_, name) => (...args) => calls.push([name, ...args]),
    set: () => true,
  });
  const shapes = overlayShapes(
    { width: 100, height: 100, faces: [{ box: [0, 0, 10, 10], score: 1, landmarks: [[1, 1], [2, 2], [3, 3], [4, 4], [5, 5]] }] },
    { x: 0, y: 0, w: 100, h: 100 },
  );
  drawOverlay(ctx, shapes);
  assert.equal(calls.filter(([n]) => n === "strokeRect").length, 1);
  assert.equal(calls.filter(([n]) => n === "arc").length, 5);
  assert.deepEqual(calls.filter(([n]) => n === "fillText").map((c) => c[1]), ["0: 1.00", "1 face"]);
});
