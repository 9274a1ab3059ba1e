"""The slice viewer's API: a done segmentation job's slices as PNG, segments over the image.

404 when the job has no segmentation (``results/<job id>/mask.npz``), or for a slice or
preset it does not have.
"""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Depends, HTTPException
from fastapi.responses import Response

from dicom_ai.web.auth import Identity
from dicom_ai.web.deps import WebContext, context, reader, row_id
from dicom_ai.web.viewer import PRESETS, render_slice

router = APIRouter()


def _mask(ctx: WebContext, job_id: int) -> dict:
    try:
        return ctx.masks.get(ctx.store.abspath(f"results/{row_id(job_id, 'job')}/mask.npz"))
    except FileNotFoundError:
        raise HTTPException(404, "no segmentation for this job") from None


@router.get("/api/jobs/{job_id}/viewer", tags=["viewer"])
def api_viewer(job_id: int, _who: Identity = Depends(reader), ctx: WebContext = Depends(context)) -> dict[str, Any]:
    """What the slice viewer needs: number of slices, window presets, segment colours."""
    item = _mask(ctx, job_id)
    return {"n_slices": len(item["paths"]), "presets": list(PRESETS),
            "colors": {str(k): v for k, v in item["colors"].items()}}


@router.get("/api/jobs/{job_id}/slices/{index}.png", tags=["viewer"], response_class=Response)
def api_slice(job_id: int, index: int, preset: str = "lung", overlay: bool = True,
              _who: Identity = Depends(reader), ctx: WebContext = Depends(context)) -> Response:
    """Slice ``index`` (0 = first in slice order) as PNG, segments over the image."""
    item = _mask(ctx, job_id)
    try:
        png = render_slice(ctx.settings.node.data_dir, item, index, preset, overlay)
    except (IndexError, KeyError):
        raise HTTPException(404, "no such slice or preset") from None
    return Response(png, media_type="image/png")  # Cache-Control: no-store (Guard): the pixels are PHI
