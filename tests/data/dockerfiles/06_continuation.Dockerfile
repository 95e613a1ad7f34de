FROM alpine
RUN apk update \
    && apk add curl \
    && rm -rf /var/cache/apk
RUN echo a \
# comment inside
    b \

    c
ENV A=1 \
    B=2
