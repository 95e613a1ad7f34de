FROM alpine
RUN <<"EOF"
echo "$HOME"
EOF
RUN 3<<EOF cat /proc/self/fd/3
fd three
EOF
RUN --mount=type=cache,target=/x <<EOF
echo flagged
EOF
RUN <<EOF1 <<EOF2
one
EOF1
two
EOF2
COPY --chmod=755 <<-EOF /usr/bin/hello
	#!/bin/sh
	echo hi
	EOF
RUN echo a<<b
RUN <<EOF

 blank lines kept

EOF
