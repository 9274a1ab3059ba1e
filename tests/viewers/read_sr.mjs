// usage: node read_sr.mjs SR.dcm SOURCES...   (SOURCES: image files, directories or a .txt list)
// Reads a TID 1500 SR with the measurement readers OHIF's viewers use and prints one JSON object:
//   cornerstone3d: @cornerstonejs/adapters' Cornerstone3D MeasurementReport (OHIF 3)
//   dcmjs:         dcmjs' legacy Cornerstone MeasurementReport (OHIF 2)
// each {measurements: [...], warnings: [...], errors: [...], exception: null | "Name: message"},
// warnings/errors being every console.warn/console.error text logged while the library ran.
import { capture, dcmjs, readDataset, listSources, buildSourceMetadata, registerWithCornerstone, emit } from "./common.mjs";

const { adaptersSR } = await import("@cornerstonejs/adapters");

const [srFile, ...srcArgs] = process.argv.slice(2);
if (!srFile || srcArgs.length === 0) {
  process.stderr.write("usage: node read_sr.mjs SR.dcm SOURCES...\n");
  process.exit(2);
}
const src = buildSourceMetadata(listSources(srcArgs));
await registerWithCornerstone(src);

const arr = (x) => (Array.isArray(x) ? x : x == null ? [] : [x]);
const first = (x) => arr(x)[0];

/** Tracking Unique Identifier -> Tracking Identifier of each measurement group of the SR. */
function trackingIdentifiers(ds) {
  const map = {};
  const walk = (items) => {
    for (const item of arr(items)) {
      const content = arr(item.ContentSequence);
      const uid = content.find((i) => first(i.ConceptNameCodeSequence)?.CodeValue === "112040")?.UID;
      const text = content.find((i) => first(i.ConceptNameCodeSequence)?.CodeValue === "112039")?.TextValue;
      if (uid) map[uid] = text ?? null;
      walk(content);
    }
  };
  walk(ds.ContentSequence);
  return map;
}

function summarize(state, ds, describe) {
  const tracking = trackingIdentifiers(ds);
  return Object.entries(state || {}).flatMap(([toolType, list]) =>
    arr(list).map((m) => ({ toolType, ...describe(m), trackingUniqueIdentifier: m.TrackingUniqueIdentifier ?? null,
      trackingIdentifier: tracking[m.TrackingUniqueIdentifier] ?? null })));
}

function library(result) {
  return { measurements: result.result ?? [], warnings: result.warnings, errors: result.errors, exception: result.exception };
}

const cornerstone3d = await capture(() => {
  const { ds } = readDataset(srFile);
  const state = adaptersSR.Cornerstone3D.MeasurementReport.generateToolState(ds, src.uidToImageId, src.metadata);
  return summarize(state, ds, (m) => {
    const data = m.annotation?.data || {};
    const stats = Object.values(data.cachedStats || {})[0] || {};
    const polyline = data.contour?.polyline ?? data.handles?.points ?? [];
    return {
      referencedSOPInstanceUID: m.sopInstanceUid ?? null,
      referencedImageId: m.annotation?.metadata?.referencedImageId ?? null,
      description: m.description ?? null,
      label: data.label ?? null,
      points: polyline.length,
      closed: data.contour?.closed ?? null,
      area: stats.area ?? null,
      mean: stats.mean ?? null,
      stdDev: stats.stdDev ?? null,
      areaUnit: stats.areaUnit ?? null,
      modalityUnit: stats.modalityUnit ?? null,
    };
  });
});

const legacy = await capture(() => {
  const { ds } = readDataset(srFile);
  const state = dcmjs.adapters.Cornerstone.MeasurementReport.generateToolState(ds);
  return summarize(state, ds, (m) => ({
    referencedSOPInstanceUID: m.sopInstanceUid ?? null,
    description: m.description ?? null,
    points: arr(m.handles?.points).length,
    area: m.cachedStats?.area ?? m.area ?? null,
    mean: m.cachedStats?.mean ?? m.meanStdDev?.mean ?? null,
    stdDev: m.cachedStats?.stdDev ?? m.meanStdDev?.stdDev ?? null,
  }));
});

emit({ file: srFile, sources: src.imageIds.length, cornerstone3d: library(cornerstone3d), dcmjs: library(legacy) });
