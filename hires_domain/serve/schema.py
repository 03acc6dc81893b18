"""The API's OpenAPI contract: answer and request schemas, every error status each route can
give (all ``{"error": "<one line>"}``), and the bearer-token scheme when the server has tokens.
``tests/test_serve_contract.py`` holds a real server to it with schemathesis."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

# request fields of both forms (JSON and multipart): name → JSON schema
OUTPUT_FORMATS = ["gtiff", "cog", "nifti", "dicom-zip"]
COMMON = {
    "model": {"type": "string", "description": "a name from GET /v1/models (default: bicubic)"},
    "scale_factor": {"type": "integer", "minimum": 1, "description": "default: the model's own scale"},
    "tile": {"type": "integer", "minimum": 1, "description": "input pixels per tile (default: automatic)"},
    "overlap": {"type": "integer", "minimum": 0, "description": "tile overlap, below tile (default: automatic)"},
    "output_format": {"type": "string", "enum": OUTPUT_FORMATS,
                      "description": "gtiff or cog for rasters, nifti for NIfTI, dicom-zip or nifti for DICOM "
                                     "(default: as the input)"},
    "steps": {"type": "integer", "minimum": 1, "description": "diffusion models only"},
    "seed": {"type": "integer", "minimum": 0, "description": "diffusion models only"},
    "samples": {"type": "integer", "minimum": 1, "description": "diffusion models only"},
    "strength": {"type": "number", "minimum": 0, "maximum": 1,
                 "description": "0: the deterministic answer (x1 models: the input unchanged; diffusion "
                                "models: their first stage), 1 (default): the model's output; x1 and "
                                "diffusion models take values below 1"},
}
JSON_BODY = {
    "type": "object", "additionalProperties": False,
    "description": "Exactly one of `source` and `source_image`. The seed's request "
                   "`{\"source_image\", \"scale_factor\", \"model\", \"enhance_face\"}` is this form.",
    "properties": {
        "source": {"type": "string", "minLength": 1,
                   "description": "a file or directory on the server under --allow-root (read in place)"},
        "source_image": {"type": "string", "minLength": 1,
                         "description": "the file as base64 (or a data:<type>;base64, URL), or an http(s) URL "
                                        "on a host listed by the server's --allow-url-host"},
        "enhance_face": {"type": "boolean", "enum": [False],
                         "description": "only false: face restoration is for photographs; this service "
                                        "enhances CT/MR volumes and satellite rasters (true is a 400)"},
        **COMMON,
    },
    "oneOf": [{"required": ["source"]}, {"required": ["source_image"]}],
}
JSON_EXAMPLES = {
    "seed": {"summary": "the seed's request: an image fetched from a host the server allows",
             "value": {"source_image": "https://pacs.example.org/studies/ct_head.nii.gz", "model": "ct-sr-x2",
                       "scale_factor": 2, "enhance_face": False}},
    "base64": {"summary": "the file itself, base64 (shortened here)",
               "value": {"source_image": "H4sICAAAAAAAA2N0X2hlYWQubmlpAO3...", "model": "ct-sr-x2"}},
    "path": {"summary": "a file already on the server, under --allow-root",
             "value": {"source": "scans/ct_lowdose.nii.gz", "model": "ct-denoise", "strength": 0.5}},
}
FORM_BODY = {
    "type": "object", "required": ["file"], "additionalProperties": False,
    "description": "The file and the options as form fields (an empty field means its default).",
    "properties": {"file": {"type": "string", "format": "binary"}, **COMMON},
}
WHY = {
    400: "a request the server refuses, with the reason: unknown field or model, a scale the model cannot do, "
         "an output format that does not fit, a file that is not one of ours, a URL host not allowed",
    401: "missing or unknown token (send 'Authorization: Bearer TOKEN')",
    404: "no such task for this token, or no such file of it",
    409: "the task is not done: its files are served when it is",
    413: "the request body, or the image fetched for source_image, is above --max-upload",
    415: "the body is neither multipart/form-data nor JSON",
    429: "this token has --max-queued tasks queued or running",
}


class Error(BaseModel):
    model_config = ConfigDict(extra="forbid")
    error: str = Field(description="one line a person understands")


class Queued(BaseModel):
    task_id: str
    status: Literal["queued"] = Field(description="a new task is queued (the seed's word 'processing' covers "
                                                  "queued and running)")


class Progress(BaseModel):
    done: int
    total: int
    unit: Literal["tiles", "steps"]
    fraction: float


class Timings(BaseModel):
    queued_s: float
    running_s: float | None


class TaskStatus(BaseModel):
    task_id: str
    status: Literal["queued", "running", "done", "failed", "cancelled"]
    model: str
    scale_factor: int
    output_format: str
    input_kind: Literal["raster", "nifti", "dicom"]
    progress: Progress
    created: str
    started: str | None
    finished: str | None
    timings: Timings
    error: str | None
    warning: str | None
    links: dict[str, str]
    previews: dict[str, str]


class Cancelled(BaseModel):
    task_id: str
    status: Literal["cancelled", "deleted"]


class Models(BaseModel):
    models: list[dict]


class Health(BaseModel):
    status: Literal["ok"]
    tokens: bool


def errors(*codes: int) -> dict:
    """``responses=`` of a route: these error statuses, each an Error."""
    return {code: {"model": Error, "description": WHY[code]} for code in codes}


def files(*media: str, description: str) -> dict:
    """``responses=`` of a route answering a file of one of these media types."""
    return {200: {"description": description, "content": {m: {"schema": {"type": "string", "format": "binary"}}
                                                           for m in media}}}


def finish(schema: dict, models: list[str], tokens: bool) -> dict:
    """FastAPI's document made exact: no 422 (request errors are 400, declared), the model names,
    and with tokens a bearer scheme and a 401 on every route but /v1/health."""
    schema.setdefault("components", {}).setdefault("schemas", {})
    for name in ("HTTPValidationError", "ValidationError"):
        schema["components"]["schemas"].pop(name, None)
    schema["components"]["schemas"]["UpscaleJson"] = JSON_BODY
    schema["components"]["schemas"]["UpscaleForm"] = FORM_BODY
    for body in (JSON_BODY, FORM_BODY):
        body["properties"]["model"]["enum"] = models
    if tokens:
        schema["components"]["securitySchemes"] = {"bearer": {"type": "http", "scheme": "bearer"}}
    for path, ops in schema["paths"].items():
        for op in ops.values():
            responses = op.setdefault("responses", {})
            responses.pop("422", None)
            for answer in responses.values():  # a file route's default JSON entry is not what it sends
                content = answer.get("content", {})
                if len(content) > 1 and content.get("application/json", {}).get("schema") == {}:
                    del content["application/json"]
            if tokens and path != "/v1/health":
                op["security"] = [{"bearer": []}]
                responses["401"] = {"description": WHY[401],
                                    "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Error"}}}}
    return schema
