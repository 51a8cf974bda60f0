"""A Factory's container runtime as its operators declare it, and whether a job's container fits it.

The declaration steers placement: a job's image must be one the Factory lists and its mounts must lie within
the directories the Factory lets containers see. It is not a security boundary (a batch script can start the
runtime itself); the site's own runtime configuration (apptainer.conf, Pyxis' settings) is.

Example (in a Factory's entry)::

    containers:
      runtime: apptainer                      # or pyxis: `srun --container-image`, rendered into the script
      images: ["/opt/images/*.sif", "/opt/images/sandboxes/*"]
      pulls: false                            # true: registry references matching `images` are pulled here
      containall: true                        # apptainer --containall: no home, host /tmp or host environment
      bind_roots: [/scratch/datasets]         # what mounts may bind; omitted: the Factory's working roots
      binds: [/opt/site-libs]                 # bound read-only into every container (apptainer)
"""

from __future__ import annotations

import fnmatch
from typing import Annotated, Literal

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, StringConstraints

from broker.factories import working_roots
from conveyor.workload import Container, ImageReference

ImagePattern = Annotated[str, StringConstraints(min_length=1, max_length=1024, pattern=r"^[A-Za-z0-9._/:@+*?-]+$")]
BindRoot = Annotated[str, StringConstraints(min_length=2, max_length=1024), AfterValidator(working_roots.check_root)]
REGISTRY_SCHEMES = ("docker://", "oras://")


class ContainerRuntime(BaseModel):
    """How a Factory runs job containers, which images it allows and what mounts may bind."""

    model_config = ConfigDict(extra="forbid", frozen=True, strict=True)

    runtime: Literal["apptainer", "pyxis"]
    images: tuple[ImagePattern, ...] = Field(
        min_length=1,
        max_length=256,
        description="the images jobs may use: site paths or registry references, '*' and '?' as in shell globs",
    )
    pulls: bool = Field(False, description="the site pulls registry references (docker://, oras://) itself")
    containall: bool = Field(
        True, description="apptainer --containall: the job sees no home, host /tmp or host environment"
    )
    bind_roots: tuple[BindRoot, ...] | None = Field(
        None, max_length=64, description="the directories mounts may bind (and below); None: the working roots"
    )
    binds: tuple[BindRoot, ...] = Field(
        (), max_length=64, description="site directories bound read-only into every container, at the same path"
    )
    executable: Annotated[str, StringConstraints(pattern=r"^[A-Za-z0-9._/+-]+$", max_length=256)] = Field(
        "apptainer", description="the apptainer command at the site (a name on PATH or an absolute path)"
    )

    def lists_image(self, image: ImageReference) -> bool:
        return any(fnmatch.fnmatchcase(image, pattern) for pattern in self.images)

    def problem(self, container: Container, working: tuple[str, ...], user: str | None) -> str | None:
        """Why ``container`` cannot run here for site user ``user`` (None: for some user), or None.

        ``working`` is the Factory's working roots, what mounts may bind when no ``bind_roots`` are declared.
        """
        if container.image.startswith(REGISTRY_SCHEMES) and not self.pulls:
            return f"pulls no registry images ({container.image})"
        if not self.lists_image(container.image):
            return f"does not list image {container.image} (it allows {', '.join(self.images)})"
        roots = self.bind_roots if self.bind_roots is not None else working
        for mount in container.mounts:
            if not working_roots.allows(roots, mount.source, user):
                return f"lets containers bind only {working_roots.listing(roots)}, not {mount.source}"
        return None


__all__ = ["REGISTRY_SCHEMES", "ContainerRuntime"]
