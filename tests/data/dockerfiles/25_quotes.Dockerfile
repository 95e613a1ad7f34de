FROM alpine
RUN echo "a \" b" 'c \' d
ENV X="a'b" Y='a"b'
ARG Q="x y" R='z w'
LABEL "k with space"=v
