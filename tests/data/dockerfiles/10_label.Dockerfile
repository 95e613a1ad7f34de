FROM alpine
LABEL version=1.0
LABEL "com.example.vendor"="ACME Inc" description="This text \
  spans lines"
LABEL multi.a=1 multi.b='two words' multi.c="x\"y"
LABEL old style value
