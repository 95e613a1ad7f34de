FROM alpine
RUN <<EOF
echo hello
echo world
EOF
RUN <<EOF bash
set -e
EOF
RUN python3 <<'PY'
print('$HOME')
PY
