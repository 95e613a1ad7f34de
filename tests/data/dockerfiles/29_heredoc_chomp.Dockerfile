FROM alpine
RUN <<-EOT
	echo tab
	EOT
RUN cat <<EOF1 && cat <<-EOF2
one
EOF1
	two
	EOF2
