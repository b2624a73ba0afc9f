"""The FID as a metric (plugins.py): the plain FID, the MC-dropout distribution, the bootstrap over
images, latent variance, the domain check and the trust level, all from the FID network's statistics
(report.py computes each; frechet.py is the distance)."""

from __future__ import annotations

from .plugin import FEATURES, Context, Plugin
from .schemas import ModelInfo, Progress
from .timing import current


def model_info(ex) -> ModelInfo:
    return ModelInfo(name=ex.description, weights_sha256=ex.weights_sha256, weights_source=ex.weights_source,
                     extractor=ex.name, feature_dim=ex.feature_dim, input_size=ex.input_size)


class Fid(Plugin):
    name = "fid"
    uses = frozenset({FEATURES})
    fields = ("fid", "fid_mc", "fid_bootstrap", "latent_variance", "feature_rows", "domain", "trust",
              "preprocessing", "model")

    def wanted(self, options) -> bool:
        return options.fid_on

    def section(self, r, g, ctx: Context) -> dict:
        from . import report as rep
        from .frechet import CPU, frechet_distance
        from .preprocess import describe

        options, ex, device = ctx.options, ctx.extractor, ctx.device
        where = device if getattr(device, "type", None) == "cuda" else CPU  # float64 linear algebra on the GPU
        clock = current()  # its steps' seconds (schemas.Timing)
        with clock.stage("frechet_plain_s"):
            fid = frechet_distance(r.plain.gaussian(), g.plain.gaussian(), where)
        with clock.stage("frechet_mc_s"):
            mc = rep.fid_mc(r, g, where)
        if ctx.progress:
            ctx.progress(Progress(stage="report", passes=options.passes))
        with clock.stage("bootstrap_s"):
            boot, boot_samples = rep.bootstrap(r, g, options.bootstrap_resamples, options.seed)
        with clock.stage("domain_check_s"):
            dom = rep.domain(r, g, ex.weights_sha256, options.resize, options.top_k)
        trust = rep.trust(fid, mc, boot, dom, r, g)
        if finding := rep.intensity_finding(r.intensity, g.intensity):
            trust.findings.append(finding)
        return dict(fid=fid, fid_mc=mc, fid_bootstrap=boot, boot_samples=boot_samples,
                    latent_variance=rep.latent_variance(r, g, options.top_k),
                    feature_rows=rep.feature_rows(r, g, options.max_feature_rows), domain=dom, trust=trust,
                    preprocessing=describe(options.resize, ex.input_size, ex.input_range_for(options.resize)),
                    model=model_info(ex))

    def headline(self, sections: dict) -> tuple[dict, str | None, list[str]]:
        from .report import fid_headline

        return fid_headline(sections["fid"], sections["fid_mc"], sections["boot_samples"], sections["feature_rows"])

    def absent(self, options) -> dict:
        # no network ran: no FID, no domain check, no trust level
        return dict(fid=None, fid_mc=None, fid_bootstrap=None, boot_samples=None, latent_variance=None, trust=None,
                    feature_rows=None, domain=None,
                    preprocessing="none: the FID network did not run (metrics: frd)",
                    model=ModelInfo(name="none (metrics: frd)", weights_sha256="", weights_source=""))


PLUGIN = Fid()
