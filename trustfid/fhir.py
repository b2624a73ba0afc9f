"""The report as FHIR R4, for hospital systems that file results as FHIR resources (a QA dashboard, a
FHIR server). The one builder: the API's ``GET /v1/jobs/{id}/report?format=fhir``, the client's
``Job.fhir()`` (which reads that) and the CLI's ``--format fhir`` all come here.

The document is a ``transaction`` Bundle, ready to POST to a FHIR server's base URL, of

- one **Device**, the AI device of HL7's "AI Transparency on FHIR": trustfid, its version (the release
  that computed the report), the feature extractor and the SHA-256 of its weights; with the FRD, its
  version, configuration hash and pyradiomics release;
- one **Observation per distance** in the report: the FID, the KID and the FRD, each when present.
  Each carries its value (``valueQuantity``, dimensionless: UCUM ``1``), its 95% interval where the
  report has one (a ``valueRange`` component), the image counts it rests on (``valueInteger``
  components), its ``method`` in words and a reference to the Device. The FID and the KID, which
  rest on the FID network's features, carry the trust level (``interpretation``) with its reasons and
  findings (``note``); the FRD uses no network, so the verdict on the network's features does not
  apply to it and its note says so. The KID has no 95% interval in the report (its spread over
  subsets is a component instead).

Built from the ``Report`` model (schemas.py) with ``fhir.resources``' R4B models (FHIR 4.3, whose
Bundle, Device and Observation are R4's), which validate every element as it is made. With a job id,
each resource has an identifier (``urn:trustfid:job|<id>/fid``) and the entries are conditional
creates on it (``ifNoneExist``), so filing the same report twice stores it once. Codes are trustfid's
own (``urn:trustfid:distance``, ``urn:trustfid:trust-level``, ``urn:trustfid:component``): FID, KID
and FRD have no LOINC or SNOMED CT codes.
"""

from __future__ import annotations

import hashlib
import uuid

from fhir.resources.R4B.annotation import Annotation
from fhir.resources.R4B.bundle import Bundle, BundleEntry, BundleEntryRequest
from fhir.resources.R4B.codeableconcept import CodeableConcept
from fhir.resources.R4B.coding import Coding
from fhir.resources.R4B.device import Device, DeviceDeviceName, DeviceVersion
from fhir.resources.R4B.identifier import Identifier
from fhir.resources.R4B.observation import Observation, ObservationComponent
from fhir.resources.R4B.quantity import Quantity
from fhir.resources.R4B.range import Range
from fhir.resources.R4B.reference import Reference

from .schemas import Report

DISTANCE = "urn:trustfid:distance"
TRUST_LEVEL = "urn:trustfid:trust-level"
COMPONENT = "urn:trustfid:component"
JOB = "urn:trustfid:job"
DEVICE = "urn:trustfid:device"
UCUM = "http://unitsofmeasure.org"
CATEGORY = "http://terminology.hl7.org/CodeSystem/observation-category"
NAMES = {"fid": "Fréchet Inception Distance (FID)", "kid": "Kernel Inception Distance (KID)",
         "frd": "Fréchet Radiomics Distance (FRD)"}
FRD_TRUST = ("The trust level of this report is the verdict on the FID network's features for the reference "
             "set; the FRD uses no network, so that verdict does not apply to it.")


def _code(system: str, code: str, display: str) -> CodeableConcept:
    return CodeableConcept(coding=[Coding(system=system, code=code, display=display)], text=display)


def _number(value: float) -> Quantity:
    return Quantity(value=value, unit="1", system=UCUM, code="1")


def _interval(code: str, display: str, ci: tuple[float, float] | None) -> list[ObservationComponent]:
    if ci is None:
        return []
    return [ObservationComponent(code=_code(COMPONENT, code, display),
                                 valueRange=Range(low=_number(ci[0]), high=_number(ci[1])))]


def _counts(real: int, generated: int) -> list[ObservationComponent]:
    return [ObservationComponent(code=_code(COMPONENT, f"{side}-images", f"{side} images"), valueInteger=n)
            for side, n in (("real", real), ("generated", generated))]


def _trust(report: Report) -> dict:
    t = report.trust
    if t is None:
        return {}
    return {"interpretation": [_code(TRUST_LEVEL, t.level, f"trust {t.level}")],
            "note": [Annotation(text=r) for r in t.reasons] + [Annotation(text=f"finding: {f}") for f in t.findings]}


def _observations(report: Report) -> dict[str, dict]:
    """Each distance's Observation fields but those every one has (status, code, device, ...)."""
    counts = report.counts
    found = {}
    if report.fid is not None:
        h = report.headline
        found["fid"] = {
            "valueQuantity": _number(report.fid),
            "method": CodeableConcept(text=f"plain FID (dropout off) of {report.model.name}; {report.preprocessing}"),
            "component": [*_interval("sampling-ci95", "95% interval from resampling the images",
                                     h.sampling_ci95 if h else None),
                          *_interval("network-ci95", "95% interval from the network's MC-dropout uncertainty",
                                     h.network_ci95 if h else None),
                          *_counts(counts.real.used, counts.generated.used)],
            **_trust(report)}
    if report.kid is not None:
        k = report.kid
        spread = ([ObservationComponent(code=_code(COMPONENT, "subset-std", "standard deviation over KID subsets"),
                                        valueQuantity=_number(k.std))] if k.std is not None else [])
        found["kid"] = {
            "valueQuantity": _number(k.value),
            "method": CodeableConcept(text=f"unbiased MMD² with the cubic polynomial kernel over {k.subsets} subsets "
                                           f"of {k.subset_size} images (clean-fid); {report.model.name}"),
            "component": [*spread, *_counts(counts.real.used, counts.generated.used)],
            **_trust(report)}
    if report.frd is not None:
        f = report.frd
        value = {"valueQuantity": _number(f.value)} if f.value is not None else {
            "dataAbsentReason": CodeableConcept(text="d² is 0: its log is undefined")}
        found["frd"] = {
            **value,
            "method": CodeableConcept(text=f"FRD {f.version}, {f.log} of the Fréchet distance of {f.features} "
                                           f"z-scored radiomic features (pyradiomics {f.pyradiomics})"),
            "component": [*_interval("sampling-ci95", "95% interval from resampling the images", f.sampling_ci95),
                          ObservationComponent(code=_code(COMPONENT, "distance-squared", "d²"),
                                               valueQuantity=_number(f.distance_squared)),
                          *_counts(f.real.used, f.generated.used)],
            "note": [Annotation(text=FRD_TRUST)]}
    return found


def _device(report: Report) -> tuple[Device, str]:
    m, version = report.model, report.trustfid_version or "unknown"
    versions = [("trustfid", version)]
    if m.weights_sha256:
        versions += [("feature extractor", m.extractor or m.name), ("weights sha256", m.weights_sha256)]
    if report.frd is not None:
        versions += [("FRD", report.frd.version), ("FRD configuration sha256", report.frd.config_sha256),
                     ("pyradiomics", report.frd.pyradiomics)]
    key = ":".join(v for _, v in versions)
    device = Device(identifier=[Identifier(system=DEVICE, value=key)],
                    deviceName=[DeviceDeviceName(name="trustfid", type="model-name")],
                    version=[DeviceVersion(type=CodeableConcept(text=kind), value=value) for kind, value in versions])
    return device, key


def bundle(report: Report, job_id: str | None = None) -> Bundle:
    """The report as a FHIR R4 transaction Bundle (see the module's docstring); ``job_id`` names the job
    in identifiers, so that filing the document again creates nothing new."""
    seed = job_id or hashlib.sha256(report.model_dump_json().encode()).hexdigest()

    def url(kind: str) -> str:  # the same document for the same report: stable ids
        return f"urn:uuid:{uuid.uuid5(uuid.NAMESPACE_URL, f'trustfid:{seed}:{kind}')}"

    device, device_key = _device(report)
    entries = [BundleEntry(fullUrl=url("device"), resource=device, request=BundleEntryRequest(
        method="POST", url="Device", ifNoneExist=f"identifier={DEVICE}|{device_key}"))]
    when = report.timing.finished_at
    for kind, fields in _observations(report).items():
        ident = {"identifier": [Identifier(system=JOB, value=f"{job_id}/{kind}")]} if job_id else {}
        obs = Observation(
            status="final", **ident,
            category=[_code(CATEGORY, "imaging", "Imaging")],
            code=_code(DISTANCE, kind, NAMES[kind]),
            device=Reference(reference=url("device"), display=f"trustfid {report.trustfid_version or ''}".strip()),
            **({"effectiveDateTime": when, "issued": when} if when else {}),
            **fields)
        request = BundleEntryRequest(method="POST", url="Observation",
                                     **({"ifNoneExist": f"identifier={JOB}|{job_id}/{kind}"} if job_id else {}))
        entries.append(BundleEntry(fullUrl=url(kind), resource=obs, request=request))
    ident = {"identifier": Identifier(system=JOB, value=job_id)} if job_id else {}
    return Bundle(type="transaction", **ident, **({"timestamp": when} if when else {}), entry=entries)


def to_json(report: Report, job_id: str | None = None) -> str:
    """``bundle`` as FHIR JSON (``application/fhir+json``)."""
    return bundle(report, job_id).model_dump_json(indent=2)
