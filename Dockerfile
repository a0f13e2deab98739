# The agentcluster cluster image: Ray 2.60 on Python 3.11, Chrome for the browser pool, the locked
# dependencies and the project. Used by `ray up` in docker mode (cluster/aws.yaml, cluster/gcp.yaml:
# docker.image) and by KubeRay (cluster/kuberay/rayservice.yaml). Build it with `make docker-image`
# (tags agentcluster:<version from pyproject.toml>), push it where the nodes can pull from.
#
# Ray's images are tagged <ray version>-py<python version>[-cpu|-gpu|-cuXX]; without a platform
# suffix the tag is the CPU image on Ubuntu 22.04, with Python under /home/ray/anaconda3, user `ray`
# (uid 1000, gid 100, passwordless sudo).
FROM rayproject/ray:2.60.0-py311

# Chrome from Google's apt repository: Ubuntu 22.04's `chromium` package is only a shim for the snap,
# which cannot run in a container. Chrome is Chromium-based and speaks the same DevTools protocol
# that browser-use drives. Fonts so that pages render text (and screenshots show it). bubblewrap and
# the system Python 3 (/usr/bin/python3) are python_exec's sandbox and the interpreter user code
# runs on; user namespaces must be allowed in the container (see docs/security.md).
USER root
RUN apt-get update -y \
 && apt-get install -y --no-install-recommends ca-certificates curl gnupg \
 && curl -fsSL https://dl.google.com/linux/linux_signing_key.pub \
    | gpg --dearmor --yes -o /usr/share/keyrings/google-chrome.gpg \
 && echo "deb [arch=amd64 signed-by=/usr/share/keyrings/google-chrome.gpg] https://dl.google.com/linux/chrome/deb/ stable main" \
    > /etc/apt/sources.list.d/google-chrome.list \
 && apt-get update -y \
 && apt-get install -y --no-install-recommends google-chrome-stable fonts-liberation fonts-noto-color-emoji \
    bubblewrap python3-minimal \
 && rm -rf /var/lib/apt/lists/*

USER ray
# The same path as the checkout that the cluster configs sync with file_mounts (~/agentcluster):
# in docker mode that mount replaces these files with the operator's checkout and the editable
# install below keeps pointing at them. Settings find configs/ here (project_root()).
WORKDIR /home/ray/agentcluster

# Dependencies first, in their own layer: it only changes with requirements.lock.
COPY --chown=ray:users requirements.lock ./
RUN pip install --no-cache-dir -r requirements.lock

# Then the project, editable: actors/, deployments/ and configs/ stay importable and readable from
# /home/ray/agentcluster, which is what `serve deploy configs/serve.yaml` imports from.
COPY --chown=ray:users . .
RUN pip install --no-cache-dir --no-deps -e .

# Offline by default: LiteLLM reads its bundled cost map instead of downloading it, tiktoken reads
# the encodings LiteLLM ships instead of downloading them, browser-use sends no telemetry and does
# not check PyPI for new versions. The tokenizer path follows the base image's Python (py311).
ENV LITELLM_LOCAL_MODEL_COST_MAP=True \
    ANONYMIZED_TELEMETRY=false \
    BROWSER_USE_CLOUD_SYNC=false \
    BROWSER_USE_VERSION_CHECK=false \
    TIKTOKEN_CACHE_DIR=/home/ray/anaconda3/lib/python3.11/site-packages/litellm/litellm_core_utils/tokenizers \
    SA01_BROWSER_CHROMIUM_PATH=/usr/bin/google-chrome-stable

# Fail the build, not the first turn, when a path above is wrong or an import is broken.
RUN test -d "$TIKTOKEN_CACHE_DIR" \
 && test -x "$SA01_BROWSER_CHROMIUM_PATH" \
 && test -x /usr/bin/bwrap && test -x /usr/bin/python3 \
 && python -c "import agentcluster, actors, deployments.app, ray; assert ray.__version__ == '2.60.0'"
