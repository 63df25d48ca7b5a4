#!/bin/sh
# modprobe stand-in for the role test container (a container cannot load kernel modules):
# "loads" each module once and, like modprobe -v, prints an insmod line only for new ones.
state=/var/lib/netreap-fake-modprobe
mkdir -p "$state"
for arg in "$@"; do
  case "$arg" in -*) continue ;; esac
  if [ ! -e "$state/$arg" ]; then
    touch "$state/$arg"
    echo "insmod /lib/modules/fake/$arg.ko"
  fi
done
