# Debian packages for the test set-up: sourced by scripts/setup-docker.sh, setup-runtimes.sh
# and test.sh.
#   apt_install PACKAGE...
# installs them quietly, without recommended packages; if that fails (no package lists yet,
# or stale ones), updates the lists and installs again.

apt_install() {
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "$@" >/dev/null \
    || { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "$@" >/dev/null; }
}
