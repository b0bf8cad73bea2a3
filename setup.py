"""Build script for the optional C accelerators (everything else is in pyproject.toml).

``vauban_trace.rebuild._crebuild`` rebuilds clean traces straight to Trace JSON;
``vauban_trace.store._cwire`` cuts an export request into the store's per-span rows;
``vauban_trace.instrument._cencode`` serialises SDK spans to OTLP bytes for the embedded exporter. All are optional:
where no C compiler is available the build skips it and the pure-Python rebuild, which is the
reference implementation, does all the work (same output, slower). ``VAUBAN_TRACE_REQUIRE_NATIVE=1``
makes a failed build an error instead (CI sets it, so the accelerator is always tested there).
"""

import os

from setuptools import Extension, setup

_REQUIRED = os.environ.get("VAUBAN_TRACE_REQUIRE_NATIVE") == "1"

setup(
    ext_modules=[
        Extension(
            "vauban_trace.rebuild._crebuild",
            sources=[
                f"src/vauban_trace/rebuild/_crebuild_src/{name}.c"
                for name in ("module", "config", "names", "json", "wire", "otlp", "values", "records", "span", "trace")
            ],
            depends=["src/vauban_trace/rebuild/_crebuild_src/crebuild.h"],
            extra_compile_args=["-O2", "-std=c11", "-Wall", "-Wextra", "-Wno-unused-parameter"],
            optional=not _REQUIRED,
        ),
        Extension(
            "vauban_trace.instrument._cencode",
            sources=[f"src/vauban_trace/instrument/_cencode_src/{name}.c" for name in ("module", "span")],
            depends=["src/vauban_trace/instrument/_cencode_src/cencode.h"],
            extra_compile_args=["-O2", "-std=c11", "-Wall", "-Wextra", "-Wno-unused-parameter"],
            optional=not _REQUIRED,
        ),
        Extension(
            "vauban_trace.store._cwire",
            sources=[f"src/vauban_trace/store/_cwire_src/{name}.c" for name in ("canonical", "rows", "snapshot", "batch", "batch_match", "ingest")],
            depends=["src/vauban_trace/store/_cwire_src/cwire.h", "src/vauban_trace/store/_cwire_src/fastrow.h"],
            extra_compile_args=["-O2", "-std=c11", "-Wall", "-Wextra", "-Wno-unused-parameter"],
            optional=not _REQUIRED,
        ),
    ]
)
