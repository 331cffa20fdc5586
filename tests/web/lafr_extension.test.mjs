// node --test tests/web : web/lafr_extension.js wired to a node as ComfyUI's frontend does
// (onExecuted with the server's ui output), on a minimal fake DOM: what the split view adds.
import { test } from "node:test";
import assert from "node:assert/strict";
import { register } from "node:module";

const STUB = new URL("./stubs/comfy_app.mjs", import.meta.url).href;
register(`data:text/javascript,${encodeURIComponent(`
  export async function resolve(specifier, context, next) {
    if (/\\/scripts\\/(app|api)\\.js$/.test(specifier)) return { url: ${JSON.stringify(STUB)}, shortCircuit: true };
    return next(specifier, context);
  }`)}`);

class FakeElement {
  constructor(tagName) {
    Object.assign(this, { tagName: tagName.toUpperCase(), style: {}, children: [], listeners: {}, clientWidth: 400, clientHeight: 300 });
    Object.assign(this, { naturalWidth: 0, naturalHeight: 0, complete: false, calls: [] });
  }
  append(...children) { this.children.push(...children); }
  replaceChildren() { this.children = []; }
  addEventListener(type, listener) { (this.listeners[type] ??= []).push(listener); }
  getBoundingClientRect() { return { left: 0, top: 0, width: this.clientWidth, height: this.clientHeight }; }
  getContext() {
    const calls = this.calls;
    return new Proxy({}, {
      get: (_, name) => (...args) => calls.push([name, ...args]),
      set: (_, name, value) => calls.push([`=${String(name)}`, value]) > 0,
    });
  }
  loaded(width, height) { // the browser finished loading this <img>
    Object.assign(this, { naturalWidth: width, naturalHeight: height, complete: true });
    for (const listener of this.listeners.load ?? []) listener();
  }
}
globalThis.document = { createElement: (tag) => new FakeElement(tag) };
globalThis.Image = class extends FakeElement { constructor() { super("img"); } };
globalThis.ResizeObserver = class { observe() {} };

const { registered, settings } = await import(STUB);
await import("../../web/lafr_extension.js");

function fakeNode() {
  return {
    widgets: [], size: [200, 100],
    addDOMWidget(name, type, element) { const widget = { name, element }; this.widgets.push(widget); return widget; },
    setSize(size) { this.size = size; },
    computeSize() { return [200, 100]; },
  };
}

async function executedSplitNode(output) {
  const nodeType = function () {};
  await registered[0].beforeRegisterNodeDef(nodeType, { name: "LAFRRestoreFaces" });
  const node = fakeNode();
  nodeType.prototype.onExecuted.call(node, output);
  return node.widgets[0]?.element;
}

const RECORD = { width: 400, height: 200, model: "dlib ResNet descriptor", legend: "same person < 0.6", threshold: 0.6,
  faces: [{ index: 0, box: [40, 20, 120, 100], distance: 0.2134 }, { index: 1, box: [200, 40, 260, 100], distance: 0.71 }] };
const PAIR = { lafr_before: [{ filename: "b0.png", subfolder: "", type: "temp" }], lafr_after: [{ filename: "a0.png", subfolder: "", type: "temp" }] };

test("the split view draws each face's distance over the images once they load", async () => {
  const box = await executedSplitNode({ ...PAIR, lafr_identity: [RECORD] });
  const [before, after, , , canvas] = box.children;
  assert.equal(before.src, "/api/view?filename=b0.png&type=temp&subfolder=");
  assert.equal(after.src, "/api/view?filename=a0.png&type=temp&subfolder=");
  assert.equal(canvas.tagName, "CANVAS");
  assert.equal(canvas.style.pointerEvents, "none"); // the split still follows the pointer
  before.loaded(400, 200); // letterboxed in the 400x300 box: drawn at y 50, scale 1
  assert.deepEqual(canvas.calls.filter(([n]) => n === "strokeRect").map((c) => c.slice(1)), [[40, 70, 80, 80], [200, 90, 60, 60]]);
  assert.deepEqual(canvas.calls.filter(([n]) => n === "fillText").map((c) => c[1]),
    ["ID 0.21", "ID 0.71", "ID input->output: dlib ResNet descriptor, same person < 0.6"]);
  assert.deepEqual(canvas.calls.filter(([n]) => n === "=strokeStyle").map((c) => c[1]), ["#ffffff", "#ff4040"]);
});

test("without distances (no identity model on the server) the split view has no layer", async () => {
  for (const output of [{ ...PAIR, lafr_identity: [] }, PAIR]) {
    const box = await executedSplitNode(output);
    assert.deepEqual(box.children.map((c) => c.tagName), ["IMG", "IMG", "DIV", "DIV"]);
    box.children[0].loaded(400, 200); // and loading the image draws nothing, throws nothing
  }
});

test("the previews setting off: nothing is added", async () => {
  settings.showPreviews = false;
  try {
    assert.equal(await executedSplitNode({ ...PAIR, lafr_identity: [RECORD] }), undefined);
  } finally {
    settings.showPreviews = true;
  }
});
