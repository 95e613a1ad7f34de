#!/bin/sh
# Make the base image busybox:latest from Debian's busybox-static, without any registry:
# a root filesystem with busybox and its applet links, /etc/passwd and /etc/group,
# imported as a one-layer image with `pybuild import`.
# Usage: samples/make-busybox.sh [NAME:TAG]     (default busybox:latest)
set -eu
ref="${1:-busybox:latest}"

if [ ! -x /bin/busybox ]; then
    echo "busybox-static is missing: installing it with apt-get" >&2
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq busybox-static
fi

rootfs=$(mktemp -d)
trap 'rm -rf "$rootfs"' EXIT
mkdir -p "$rootfs/bin" "$rootfs/sbin" "$rootfs/usr/bin" "$rootfs/usr/sbin" \
         "$rootfs/etc" "$rootfs/root" "$rootfs/tmp" "$rootfs/home" "$rootfs/var" \
         "$rootfs/proc" "$rootfs/sys" "$rootfs/dev"
chmod 1777 "$rootfs/tmp"
chmod 0700 "$rootfs/root"
cp /bin/busybox "$rootfs/bin/busybox"
# One symlink per applet, as the busybox image does (relative, so they resolve inside the image).
for applet in $(/bin/busybox --list-full); do
    [ "$applet" = "bin/busybox" ] && continue
    dir=$(dirname "$applet")
    up=$(echo "$dir" | sed 's|[^/][^/]*|..|g')
    [ -e "$rootfs/$applet" ] || ln -s "$up/bin/busybox" "$rootfs/$applet"
done
cat > "$rootfs/etc/passwd" <<'PW'
root:x:0:0:root:/root:/bin/sh
daemon:x:1:1:daemon:/usr/sbin:/bin/false
nobody:x:65534:65534:nobody:/home:/bin/false
PW
cat > "$rootfs/etc/group" <<'GR'
root:x:0:
daemon:x:1:
nogroup:x:65534:
GR
echo "root:*::0:::::" > "$rootfs/etc/shadow"
chmod 0640 "$rootfs/etc/shadow"
# Fixed mtimes: the same busybox package always gives the same layer digest.
find "$rootfs" -exec touch -h -d @0 {} +

# Dated by the busybox binary, with a fixed comment: the same package gives the same image on
# every machine, so SOURCE_DATE_EPOCH builds and --cache-from agree across stores and runners.
SOURCE_DATE_EPOCH=$(stat -c %Y /bin/busybox) \
    pybuild import --change 'CMD ["sh"]' -m "busybox-static $(/bin/busybox | head -n 1 | cut -d' ' -f2)" \
    "$rootfs" "$ref"
