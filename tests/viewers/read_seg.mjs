// usage: node read_seg.mjs SEG.dcm SOURCES...   (SOURCES: image files, directories or a .txt list)
// Reads a DICOM SEG with the segmentation loaders OHIF's viewers use and prints one JSON object:
//   cornerstone3d: @cornerstonejs/adapters' Cornerstone3D createFromDICOMSegBuffer (OHIF 3);
//                  frames: per SEG frame, its segment and the source slice the loader puts it on
//                  (findReferenceSourceImageId, the function the loader calls for each frame)
//   dcmjs:         dcmjs' legacy Cornerstone Segmentation.generateToolState (OHIF 2); it has no
//                  per-frame function, so frames lists one entry per (segment, slice) it filled
// each with segmentsOnFrame {source SOP Instance UID: [segment numbers]}, warnings, errors
// (every console.warn/console.error text) and exception (null | "Name: message").
import { capture, dcmjs, readDataset, listSources, buildSourceMetadata, registerWithCornerstone, emit } from "./common.mjs";

const { adaptersSEG } = await import("@cornerstonejs/adapters");
const Segmentation4X = await import("@cornerstonejs/adapters/cornerstone/Segmentation_4X");

const [segFile, ...srcArgs] = process.argv.slice(2);
if (!segFile || srcArgs.length === 0) {
  process.stderr.write("usage: node read_seg.mjs SEG.dcm SOURCES...\n");
  process.exit(2);
}
const src = buildSourceMetadata(listSources(srcArgs));
await registerWithCornerstone(src);

/** segmentsOnFrame (indexed like imageIds) -> {source SOP Instance UID: [segments]} and (segment, UID) frames. */
function bySource(segmentsOnFrame) {
  const out = {};
  const frames = [];
  (segmentsOnFrame || []).forEach((segments, index) => {
    if (!segments || segments.length === 0) return;
    const uid = src.imageIdToUid(src.imageIds[index]);
    out[uid] = [...segments].map(Number).sort((a, b) => a - b);
    for (const segment of out[uid]) frames.push({ segment, sourceSOPInstanceUID: uid });
  });
  return { segmentsOnFrame: out, frames };
}

function library(result) {
  const r = result.result || {};
  return { frames: r.frames ?? [], segmentsOnFrame: r.segmentsOnFrame ?? {}, warnings: result.warnings,
    errors: result.errors, exception: result.exception };
}

const cornerstone3d = await capture(async () => {
  const { ds, ab } = readDataset(segFile);
  const loaded = await adaptersSEG.Cornerstone3D.Segmentation.createFromDICOMSegBuffer(src.imageIds, ab.slice(0),
    { metadataProvider: src.metadata });
  const { segmentsOnFrame } = bySource(loaded.segmentsOnFrame);
  const multiframe = dcmjs.normalizers.Normalizer.normalizeToDataset([ds]);
  const uidToImageId = Object.fromEntries(src.imageIds.map((id) => [src.imageIdToUid(id), id]));
  const frames = multiframe.PerFrameFunctionalGroupsSequence.map((_, i) => {
    const imageId = Segmentation4X.findReferenceSourceImageId(multiframe, i, src.imageIds, src.metadata, 1e-3, uidToImageId);
    return { frame: i + 1, segment: Number(Segmentation4X.getSegmentIndex(multiframe, i)),
      sourceSOPInstanceUID: imageId ? src.imageIdToUid(imageId) : null };
  });
  return { frames, segmentsOnFrame };
});

const legacy = await capture(async () => {
  const { ab } = readDataset(segFile);
  const state = await dcmjs.adapters.Cornerstone.Segmentation.generateToolState(src.imageIds, ab.slice(0), src.metadata);
  return bySource(state.segmentsOnFrame);
});

emit({ file: segFile, sources: src.imageIds.length, cornerstone3d: library(cornerstone3d), dcmjs: library(legacy) });
