FROM alpine
COPY <<EOF /etc/motd
hi there
EOF
COPY <<A <<"B" /dst/
a
A
b
B
ADD <<EOF /x
x
EOF
