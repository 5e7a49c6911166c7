# Headless Chromium for the escaping test (tests/it/hostile.rs opens rendered invoices in a real
# browser and checks that no planted script ran). Sourced by scripts/test; installs the Debian
# package on a fresh machine and exports BILLRUN_TEST_CHROMIUM.
if [ ! -x /usr/bin/chromium ]; then
  echo "installing chromium (Debian package) for the HTML escaping test" >&2
  if [ "$(id -u)" = 0 ]; then SUDO=""; else SUDO="sudo"; fi
  $SUDO apt-get update -qq >&2 || true
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends chromium >&2
fi
if [ -x /usr/bin/chromium ]; then
  export BILLRUN_TEST_CHROMIUM=/usr/bin/chromium
else
  echo "chromium could not be installed; the escaping test will fail" >&2
fi
