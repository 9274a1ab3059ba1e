// Shared by read_sr.mjs and read_seg.mjs: console capture, DICOM reading with dcmjs, and a
// cornerstone-style metadata provider built from the source images' headers.
//
// Import this module FIRST and load every library with a dynamic import() after it: the
// libraries' loglevel loggers bind the console methods when they load, so console has to be
// wrapped before that or their warnings go straight to the terminal (and would corrupt stdout,
// which carries the one JSON result).
import fs from "node:fs";
import * as nodeModule from "node:module";
import path from "node:path";

// Some packages (dcmjs' build/dcmjs.es.js, gl-matrix's esm/) ship ES module files as .js in a
// package without "type": "module". Node >= 20.19 and 22 detect the ES module syntax; Node 18
// (Debian 12's nodejs) loads such a file as CommonJS and fails on "import"/"export". This module
// loader hook (Node >= 18.19) does the same detection for .js files under node_modules.
const ES_SYNTAX_HOOK = `import fs from "node:fs";
const ES_SYNTAX = /^\\s*(import\\s*[\\w{*"']|export\\s*[{*]|export\\s+(default|const|let|var|function|class|async)\\b)/m;
export async function load(url, context, nextLoad) {
  const loaded = await nextLoad(url, context);
  if (loaded.format !== "commonjs" || !url.startsWith("file:") || !url.includes("/node_modules/") || !url.endsWith(".js")) return loaded;
  const text = fs.readFileSync(new URL(url), "utf8");
  if (!ES_SYNTAX.test(text)) return loaded;
  return nextLoad(url, { ...context, format: "module" });
}`;
if (typeof nodeModule.register === "function") {
  nodeModule.register("data:text/javascript," + encodeURIComponent(ES_SYNTAX_HOOK));
}

let sink = null; // {warnings, errors} of the library being run; null: messages are dropped

const first = (x) => (Array.isArray(x) ? x[0] : x);

/** A short name for an SR content item: value type, concept, template and Tracking Identifier. */
function describeContentItem(item) {
  const concept = first(item.ConceptNameCodeSequence)?.CodeMeaning;
  const template = first(item.ContentTemplateSequence)?.TemplateIdentifier;
  const items = Array.isArray(item.ContentSequence) ? item.ContentSequence : [item.ContentSequence].filter(Boolean);
  const tracking = items.find((i) => first(i.ConceptNameCodeSequence)?.CodeValue === "112039")?.TextValue;
  return `[${item.ValueType} "${concept}" TID ${template ?? "?"} tracking "${tracking ?? ""}"]`;
}

function fmt(x) {
  if (x instanceof Error) return `${x.name}: ${x.message}`;
  if (typeof x === "string") return x;
  if (x && typeof x === "object" && x.ValueType && x.ConceptNameCodeSequence) return describeContentItem(x);
  try {
    return JSON.stringify(x, (k, v) => (k === "_vrMap" ? undefined : v)).slice(0, 200);
  } catch {
    return String(x);
  }
}

for (const level of ["log", "info", "debug", "trace", "warn", "error"]) {
  console[level] = (...args) => {
    if (!sink) return;
    const text = args.map(fmt).join(" ").slice(0, 2000);
    if (level === "warn") sink.warnings.push(text);
    else if (level === "error") sink.errors.push(text);
  };
}

// Node 18 has no global CustomEvent (Node >= 19 does); @cornerstonejs/core's triggerEvent uses it.
if (typeof globalThis.CustomEvent === "undefined") {
  globalThis.CustomEvent = class CustomEvent extends Event {
    constructor(type, options = {}) {
      super(type, options);
      this.detail = options.detail ?? null;
    }
  };
}

// Node 18 has no global crypto (Web Crypto; Node >= 19 does); @cornerstonejs/core's uuidv4 uses it.
if (typeof globalThis.crypto === "undefined") {
  globalThis.crypto = (await import("node:crypto")).webcrypto;
}

export const { default: dcmjs } = await import("dcmjs");

/** Run fn (sync or async) with the console captured; returns {result, warnings, errors, exception}. */
export async function capture(fn) {
  const out = { result: null, warnings: [], errors: [], exception: null };
  sink = out;
  try {
    out.result = await fn();
  } catch (e) {
    out.exception = e instanceof Error ? `${e.name}: ${e.message}` : String(e);
  } finally {
    sink = null;
  }
  return out;
}

/** Parse a DICOM file into a naturalized dcmjs dataset; also returns its bytes as an ArrayBuffer. */
export function readDataset(file) {
  const buf = fs.readFileSync(file);
  const ab = buf.buffer.slice(buf.byteOffset, buf.byteOffset + buf.byteLength);
  const dict = dcmjs.data.DicomMessage.readFile(ab);
  const ds = dcmjs.data.DicomMetaDictionary.naturalizeDataset(dict.dict);
  ds._meta = dcmjs.data.DicomMetaDictionary.namifyDataset(dict.meta);
  return { ds, ab };
}

/** Source image paths from the arguments: files, directories, or a .txt list (one path a line). */
export function listSources(args) {
  const out = [];
  for (const a of args) {
    if (fs.statSync(a).isDirectory()) {
      for (const f of fs.readdirSync(a).sort()) out.push(path.join(a, f));
    } else if (a.endsWith(".txt")) {
      out.push(...fs.readFileSync(a, "utf8").split("\n").map((s) => s.trim()).filter(Boolean));
    } else {
      out.push(a);
    }
  }
  return out;
}

/**
 * imageIds ("dicomfile:<path>"), SOP Instance UID -> imageId maps and a metadata provider with the
 * modules the adapters ask for, from the source images' headers (no pixel data is decoded).
 * Messages dcmjs logs while parsing the source images are not the libraries reading our objects,
 * so they are dropped.
 */
export function buildSourceMetadata(files) {
  const table = new Map();
  const imageIds = [];
  const uidToImageId = {}; // "<uid>:1" (frame 1, what the SR adapter looks up) and "<uid>"
  for (const f of files) {
    const ds = readDataset(f).ds;
    const imageId = "dicomfile:" + f;
    const ps = (ds.PixelSpacing || [1, 1]).map(Number);
    const iop = ds.ImageOrientationPatient.map(Number);
    table.set(imageId, {
      imagePlaneModule: {
        frameOfReferenceUID: ds.FrameOfReferenceUID,
        rows: ds.Rows,
        columns: ds.Columns,
        imagePositionPatient: ds.ImagePositionPatient.map(Number),
        imageOrientationPatient: iop,
        rowCosines: iop.slice(0, 3),
        columnCosines: iop.slice(3, 6),
        pixelSpacing: ps,
        rowPixelSpacing: ps[0],
        columnPixelSpacing: ps[1],
        sliceThickness: Number(ds.SliceThickness),
      },
      generalSeriesModule: {
        modality: ds.Modality,
        seriesInstanceUID: ds.SeriesInstanceUID,
        studyInstanceUID: ds.StudyInstanceUID,
      },
      sopCommonModule: { sopInstanceUID: ds.SOPInstanceUID, sopClassUID: ds.SOPClassUID },
      generalImageModule: { sopInstanceUID: ds.SOPInstanceUID, instanceNumber: ds.InstanceNumber },
      imagePixelModule: {
        rows: ds.Rows,
        columns: ds.Columns,
        bitsAllocated: ds.BitsAllocated,
        samplesPerPixel: 1,
        photometricInterpretation: ds.PhotometricInterpretation,
      },
      instance: ds,
    });
    imageIds.push(imageId);
    uidToImageId[ds.SOPInstanceUID + ":1"] = imageId;
    uidToImageId[ds.SOPInstanceUID] = imageId;
  }
  const metadata = {
    get: (type, imageId) => table.get(imageId)?.[type],
    addCustomMetadata: (imageId, type, value) => {
      if (!table.has(imageId)) table.set(imageId, {});
      table.get(imageId)[type] = value;
    },
  };
  const imageIdToUid = (id) => table.get(id)?.sopCommonModule.sopInstanceUID ?? null;
  return { imageIds, uidToImageId, metadata, imageIdToUid };
}

/** Register the source metadata with @cornerstonejs/core's global provider list (imageToWorldCoords reads it). */
export async function registerWithCornerstone(src) {
  const { metaData } = await import("@cornerstonejs/core");
  metaData.addProvider((type, imageId) => src.metadata.get(type, imageId), 10000);
}

/** Print the one JSON result on stdout (console is captured, so write to the stream). */
export function emit(obj) {
  process.stdout.write(JSON.stringify(obj, null, 1) + "\n");
}
